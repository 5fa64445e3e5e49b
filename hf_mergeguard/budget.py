"""``--budget-hours H``: cut a run to fit its estimated cost (:mod:`hf_mergeguard.plan`) under H hours, and say what
was cut.

The protection itself is never cut (its training is what the user asked for); the self-test is cut, in this order,
each step only while the estimate is still over the budget, least informative first:

1. ``--thorough`` (finer grids, every merge method, asymmetric weights and more seeds) gives way to the defaults;
2. ``--limit`` halves, from the largest task's prompts down to :data:`MIN_BUDGET_LIMIT` per task (a seeded random
   subset, the same for every model: scores get noisier, no attack is lost);
3. adaptive attacks are dropped one at a time, the one that saves the most first.

What was cut is recorded in the self-test's options (``budget_dropped``), so ``selftest.json`` and the model card
say it (the card lists it under what the self-test did not cover). A run that still does not fit is refused before any
work, with the estimate of its smallest cut.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable

from .errors import ConfigError

log = logging.getLogger(__name__)

# Below 100 prompts a task's score has a standard error of up to 5 points: the gates' margins would be noise.
MIN_BUDGET_LIMIT = 100


def fit_to_budget(config, plan_of: Callable[[object], object], *, drop_attacks: bool = True):
    """Cut ``config`` (a ``ProtectConfig`` or ``CheckConfig``; changed in place) until ``plan_of(config)`` is estimated
    at most ``config.selftest.budget_hours``; returns the plan of the cut run (with ``plan.budget`` set), or None
    without a budget. ``drop_attacks``: False for ``attack``, whose attacks are what it was asked to run."""

    selftest = config.selftest
    if selftest.budget_hours is None:
        return None
    budget = selftest.budget_hours * 3600
    dropped: list[str] = []
    plan = plan_of(config)

    def over(p) -> bool:
        return p.totals["estimated_seconds"] > budget

    if over(plan) and selftest.thorough:
        selftest.thorough = False
        dropped.append("--thorough's finer grids, extra methods and extra points (the defaults instead)")
        plan = plan_of(config)
    largest = max((task.prompts for task in plan.tasks if task.prompts), default=0)
    limit, given = min(selftest.limit or largest, largest), selftest.limit
    while over(plan) and limit > MIN_BUDGET_LIMIT:
        limit = max(MIN_BUDGET_LIMIT, limit // 2)
        selftest.limit = limit
        plan = plan_of(config)
    if selftest.limit != given:
        dropped.append(f"prompts: at most {selftest.limit} per task (--limit {selftest.limit}, a seeded random subset)")
    while over(plan) and selftest.adaptive and drop_attacks:
        attacks = selftest.attack_names()
        if len(attacks) == 1:
            trial = copy.deepcopy(config)
            trial.selftest.adaptive, trial.selftest.attacks = False, None
            without = plan_of(trial)
            if without.totals["estimated_seconds"] < plan.totals["estimated_seconds"]:
                selftest.adaptive, selftest.attacks = False, None
                dropped.append(f"the {attacks[0]} attack (no adaptive attack ran)")
                plan = without
            break
        costs = {}
        for name in attacks:
            trial = copy.deepcopy(config)
            trial.selftest.attacks = [a for a in attacks if a != name]
            costs[name] = plan_of(trial)
        cheapest = min(costs, key=lambda name: costs[name].totals["estimated_seconds"])
        if costs[cheapest].totals["estimated_seconds"] >= plan.totals["estimated_seconds"]:
            break  # the attacks left cost nothing on their own (a reference made with another's work, one that does not apply)
        selftest.attacks = [a for a in attacks if a != cheapest]
        dropped.append(f"the {cheapest} attack")
        plan = costs[cheapest]
    hours = plan.totals["estimated_seconds"] / 3600
    if over(plan):
        raise ConfigError(
            f"The run does not fit --budget-hours {selftest.budget_hours:g} on {plan.hardware['devices']} x "
            f"{plan.hardware['name']}: cut as far as it goes ({'; '.join(dropped) or 'nothing to cut'}) it is still "
            f"estimated at {hours:.1f} h.",
            "Raise --budget-hours, run on more GPUs (price them first: --plan --plan-gpus N), or pass fewer --methods; "
            "`--plan` shows where the time goes.",
        )
    selftest.budget_dropped = dropped
    plan.budget = {"hours": selftest.budget_hours, "estimated_hours": round(hours, 2), "dropped": dropped}
    if dropped:
        log.warning("Cut to fit --budget-hours %g (estimated %.1f h): %s.", selftest.budget_hours, hours, "; ".join(dropped))
    return plan
