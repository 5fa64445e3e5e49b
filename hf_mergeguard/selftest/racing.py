"""The attacker's search on a budget: successive halving over the merge grid, with confidence bounds.

Scoring every grid point on every prompt is what made a self-test cost 12–25 GPU-hours at 8B. An attacker does not
need every point's exact score, only the best one's; so each (variant, method) races its grid points:

1. every point is scored on a first part of each task's prompts (a seeded random order: the same for every point);
2. a point is dropped when it clearly cannot be the attacker's best: once some point is *surely fair* (its
   free-rider share's lower bound meets ``--freerider-floor``), any point that is surely unfair, or whose defender
   score's upper bound is below the best surely-fair point's lower bound, is dropped (the attacker's best is chosen
   among fair points whenever there is one: :func:`~hf_mergeguard.report.scoring.attacker_best`);
3. the survivors are scored on the next part, and so on; the last part goes to the ``race_keep`` best survivors
   only, which end scored on every prompt, like a full grid; when none of them keeps the free-rider's skill on every
   prompt, the next survivor that may keep it goes on too, until one does (or none is left).

Bounds are ``mean ± z·se`` with se = √(p̃(1−p̃)/n), p̃ = (k+1)/(n+2) the smoothed share of n prompts (any per-prompt
metric in [0, 1] has a variance of at most p(1−p)), combined over tasks as a mean; z = ``race_z`` (2: about 95% per
comparison). The verdict only ever uses points scored on every prompt; a dropped point's report entry keeps the
score of the prompts it was scored on, and says how many.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from ..evaluation.sampling import summed
from ..report.scoring import TOLERANCE, Shares, gain_share

MIN_FIRST_PART = 16  # prompts per task in the first part: fewer would make every bound too wide to drop anything


def race_parts(indices: dict[str, list[int]], rounds: int, seed: int = 1234) -> list[dict[str, list[int]]]:
    """Each task's documents in a seeded random order, cut into ``rounds`` parts of 1/3^(rounds-1), ... , of the whole
    (each part adds to the ones before: 1/9, 2/9, 6/9 for three rounds). Fewer rounds when a task is too small for
    a first part of :data:`MIN_FIRST_PART` prompts; one round is the full grid."""
    rounds = effective_rounds(min((len(docs) for docs in indices.values()), default=0), rounds)
    orders = {task: random.Random(f"{seed}:race:{task}").sample(docs, len(docs)) for task, docs in indices.items()}
    parts, done = [], {task: 0 for task in indices}
    for r in range(rounds):
        part = {}
        for task, order in orders.items():
            end = len(order) if r == rounds - 1 else math.ceil(len(order) / 3 ** (rounds - 1 - r))
            part[task] = sorted(order[done[task] : end])
            done[task] = end
        parts.append(part)
    return parts


def effective_rounds(smallest_task: int, rounds: int) -> int:
    """The rounds a race can have when the smallest task has ``smallest_task`` prompts (see :func:`race_parts`)."""
    while rounds > 1 and smallest_task / 3 ** (rounds - 1) < MIN_FIRST_PART:
        rounds -= 1
    return max(1, rounds)


def full_scoring_share(rounds: int, candidates: int, keep: int) -> tuple[float, int]:
    """At most how many full-set scorings' worth of prompts, and how many merges, a race of ``candidates`` costs (no
    point dropped before the last part): every candidate on the first parts, ``keep`` on the rest."""
    if rounds <= 1:
        return float(candidates), candidates
    early = 1 / 3
    return candidates * early + min(keep, candidates) * (1 - early), candidates * (rounds - 1) + min(keep, candidates)


@dataclass
class Estimate:
    """A task's score on the prompts scored so far: the mean and how many."""

    mean: float
    n: int

    def add(self, mean: float, n: int) -> Estimate:
        total = self.n + n
        return Estimate((summed(self.mean, self.n) + summed(mean, n)) / total if total else 0.0, total)

    @property
    def se(self) -> float:
        if self.n == 0:
            return math.inf
        smoothed = (self.mean * self.n + 1) / (self.n + 2)
        return math.sqrt(smoothed * (1 - smoothed) / self.n)


def _mean_bounds(estimates: Sequence[Estimate], z: float) -> tuple[float, float, float]:
    """(mean, low, high) of the mean over tasks."""
    mean = sum(e.mean for e in estimates) / len(estimates)
    se = math.sqrt(sum(e.se**2 for e in estimates)) / len(estimates)
    return mean, mean - z * se, mean + z * se


@dataclass
class Candidate:
    key: object  # the job
    freerider: int
    estimates: dict[str, Estimate]
    dropped_at: int | None = None  # prompts of its first task it had been scored on when it was dropped

    def scores(self) -> dict[str, float]:
        return {task: e.mean for task, e in self.estimates.items()}

    @property
    def prompts(self) -> int:
        return next(iter(self.estimates.values())).n if self.estimates else 0


def _bounds(candidate: Candidate, shares: Shares, z: float) -> tuple[tuple[float, float, float], tuple[float, float] | None]:
    """The defender score's (mean, low, high) and the free-rider share's (low, high), or None when it has no tasks."""
    defender = _mean_bounds([candidate.estimates[t] for t in shares.tasks], z)
    rider_tasks = shares.freerider_tasks[candidate.freerider]
    if not rider_tasks:
        return defender, None
    _, low, high = _mean_bounds([candidate.estimates[t] for t in rider_tasks], z)
    base = sum(shares.standalone["base"][t] for t in rider_tasks) / len(rider_tasks)
    own = sum(shares.standalone[f"freerider{candidate.freerider}"][t] for t in rider_tasks) / len(rider_tasks)
    kept_low, kept_high = gain_share(low, base, own), gain_share(high, base, own)
    if kept_low is None:  # the free-rider gained nothing: every merge keeps "all" of nothing
        return defender, None
    return defender, (kept_low, kept_high)


def prune(candidates: list[Candidate], shares: Shares, floor: float, z: float) -> None:
    """Mark the candidates that cannot be the attacker's best (see the module docstring) as dropped."""
    alive = [c for c in candidates if c.dropped_at is None]
    bounds = {id(c): _bounds(c, shares, z) for c in alive}

    def surely_fair(c):
        rider = bounds[id(c)][1]
        return rider is None or rider[0] >= floor - TOLERANCE

    def surely_unfair(c):
        rider = bounds[id(c)][1]
        return rider is not None and rider[1] < floor - TOLERANCE

    fair = [c for c in alive if surely_fair(c)]
    if not fair:
        return
    best_low = max(bounds[id(c)][0][1] for c in fair)
    for c in alive:
        if surely_unfair(c) or bounds[id(c)][0][2] < best_low:
            c.dropped_at = c.prompts


def finalists(candidates: list[Candidate], shares: Shares, floor: float, z: float, keep: int) -> list[Candidate]:
    """The ``keep`` survivors that go on to every prompt: those that may be fair first, by defender score."""
    alive = [c for c in candidates if c.dropped_at is None]

    def rank(c):
        defender, rider = _bounds(c, shares, z)
        may_be_fair = rider is None or rider[1] >= floor - TOLERANCE
        return (may_be_fair, defender[0])

    ranked = sorted(alive, key=rank, reverse=True)
    return ranked[:keep]


def race(
    groups: Sequence[Sequence[tuple[object, int]]],
    parts: list[dict[str, list[int]]],
    score_part: Callable[[list[tuple[object, int]]], list[dict]],
    shares: Shares,
    *,
    floor: float,
    z: float,
    keep: int,
) -> list[Candidate]:
    """Race each group of (job, free-rider index) over the prompt ``parts``; ``score_part([(job, part index)])`` scores
    jobs on parts (all at once: the processes share them) and returns, per job, ``{task: (mean, n)}``. Returns every
    candidate with its estimates (the finalists' cover every prompt)."""
    everyone = [[Candidate(job, rider, {}) for job, rider in group] for group in groups]
    for index in range(len(parts)):
        last = index == len(parts) - 1
        running = []
        for group in everyone:
            alive = [c for c in group if c.dropped_at is None]
            running += finalists(group, shares, floor, z, keep) if last else alive
        for candidate, result in zip(running, score_part([(c.key, index) for c in running])):
            for task, (mean, n) in result.items():
                candidate.estimates[task] = candidate.estimates.get(task, Estimate(0.0, 0)).add(mean, n)
        if last:
            _until_one_is_fair(everyone, running, index, score_part, shares, floor, z)
        else:
            for group in everyone:
                prune(group, shares, floor, z)
    return [c for group in everyone for c in group]


def _fair_on_every_prompt(candidate: Candidate, shares: Shares, floor: float) -> bool:
    _, rider = _bounds(candidate, shares, 0.0)
    return rider is None or rider[0] >= floor - TOLERANCE


def _until_one_is_fair(everyone, finished: list[Candidate], last: int, score_part, shares: Shares, floor: float, z: float) -> None:
    """After the last part: a group none of whose finalists keeps the free-rider's skill on every prompt sends its next
    survivor that may keep it (by defender score) to the last part, until one does or none is left; so the race's
    best is a fair point whenever the full grid's would be (the finalists chosen at a third of the prompts can all
    turn out unfair). The rest are marked dropped."""
    done = {id(c) for c in finished}
    while True:
        more = []
        for group in everyone:
            if any(id(c) in done and _fair_on_every_prompt(c, shares, floor) for c in group):
                continue
            waiting = [c for c in group if c.dropped_at is None and id(c) not in done]
            if waiting:
                more += finalists(waiting, shares, floor, z, 1)
        if not more:
            break
        for candidate, result in zip(more, score_part([(c.key, last) for c in more])):
            for task, (mean, n) in result.items():
                candidate.estimates[task] = candidate.estimates.get(task, Estimate(0.0, 0)).add(mean, n)
            done.add(id(candidate))
    for group in everyone:
        for c in group:
            if c.dropped_at is None and id(c) not in done:
                c.dropped_at = c.prompts
