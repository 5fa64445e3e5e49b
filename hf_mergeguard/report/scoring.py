"""Scoring, in one place: the defender's score, kept shares of a skill gain, the free-rider filter and the attacker's
best. The self-test's analysis and every adaptive attack use these, so one rule means one thing everywhere.

* the **defender's score** of a model is the mean of its scores on the defender's tasks;
* a **kept share** is ``(score - floor) / (reference - floor)``: how much of a skill gain over the base survives;
  ``None`` when the reference is not above the floor (there is no gain to keep);
* a result **keeps the free-rider's skill** when its free-rider share is at least ``freerider_floor`` (or the
  free-rider has no tasks to measure): a merge that wrecks the free-rider's own skill is no free ride;
* the **attacker's best** of some results is the one with the highest defender score among those that keep the
  free-rider's skill, else the highest of all (and it says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, TypeVar

from .schema import ScoredModel

T = TypeVar("T")

# Shares are compared with a small tolerance: 0.5 computed as 0.49999999999 still meets a 0.5 floor.
TOLERANCE = 1e-9


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def task_score(scores: Mapping[str, float], tasks: Sequence[str]) -> float:
    """The mean score over ``tasks``."""
    return mean([scores[task] for task in tasks])


def gain_share(score: float, floor: float, reference: float) -> float | None:
    """The share of ``reference``'s gain over ``floor`` that ``score`` keeps; ``None`` when there is no gain."""
    gain = reference - floor
    if gain <= TOLERANCE:
        return None
    return (score - floor) / gain


def keeps_freerider_skill(freerider_kept: float | None, freerider_floor: float) -> bool:
    """The free-rider filter: None (no free-rider tasks to measure) passes."""
    return freerider_kept is None or freerider_kept >= freerider_floor - TOLERANCE


def attacker_best(
    results: Sequence[T], freerider_floor: float, *, score: Callable[[T], float], freerider_kept: Callable[[T], float | None]
) -> tuple[T, bool]:
    """The attacker's best of ``results`` and whether it keeps the free-rider's skill (see the module docstring).

    Ties go to the first result, in the order given.
    """
    fair = [r for r in results if keeps_freerider_skill(freerider_kept(r), freerider_floor)]
    return max(fair or results, key=score), bool(fair)


def free_ride(defender_kept: float | None, freerider_kept: float | None) -> float | None:
    """How much of both skills one merge keeps: the smaller of the two shares (None if either is unknown)."""
    if defender_kept is None or freerider_kept is None:
        return None
    return min(defender_kept, freerider_kept)


@dataclass(frozen=True)
class Shares:
    """Turns scores into kept shares, from the standalone scores of the base, the reference and each free-rider.

    Args:
        standalone: model -> task -> score ("base", the reference variant, "freerider<i>").
        tasks: the defender's tasks.
        freerider_tasks: each free-rider's own tasks (an empty list: it has none).
        reference: the variant whose gain is the 100% ("original" when known, else "protected").
    """

    standalone: Mapping[str, Mapping[str, float]]
    tasks: Sequence[str]
    freerider_tasks: Sequence[Sequence[str]]
    reference: str

    @property
    def floor(self) -> float:
        return self.defender_score(self.standalone["base"])

    @property
    def reference_score(self) -> float:
        return self.defender_score(self.standalone[self.reference])

    def defender_score(self, scores: Mapping[str, float]) -> float:
        return task_score(scores, self.tasks)

    def defender_kept(self, score: float) -> float | None:
        return gain_share(score, self.floor, self.reference_score)

    def freerider_kept(self, scores: Mapping[str, float], index: int) -> float | None:
        tasks = self.freerider_tasks[index]
        if not tasks:
            return None
        own = task_score(self.standalone[f"freerider{index}"], tasks)
        return gain_share(task_score(scores, tasks), task_score(self.standalone["base"], tasks), own)

    def scored(self, scores: Mapping[str, float], freerider: int, **where) -> ScoredModel:
        """A model's scores as a :class:`ScoredModel` (``where``: its method and coefficient, if any)."""
        score = self.defender_score(scores)
        kept, rider_kept = self.defender_kept(score), self.freerider_kept(scores, freerider)
        return ScoredModel(
            defender_score=score,
            defender_kept=kept,
            freerider=freerider,
            freerider_kept=rider_kept,
            scores=dict(scores),
            free_ride=free_ride(kept, rider_kept),
            **where,
        )
