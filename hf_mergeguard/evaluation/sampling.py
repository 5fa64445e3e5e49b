"""Which prompts a scoring reads and when it stops: ``--limit``'s seeded subset, the degenerate-output probe, and means
combined from parts of a task's prompts (the race's parts, the probe and the rest)."""

from __future__ import annotations

import random
import re
from typing import Sequence

DEGENERATE_PROBE = 16  # prompts of a generation task scored first: all degenerate, and the rest is not generated
SUBSAMPLE_SEED = 1234  # --limit's prompts: the same seeded subset for every model, run and process


def subsample(task: str, size: int, limit: int | None) -> list[int] | None:
    """The indices of the documents ``--limit`` scores: a seeded random subset of ``limit`` of the ``size`` documents
    (sorted; the same for every model, so their scores compare), or None for all of them. The first N would be a
    biased sample wherever a dataset is ordered (by difficulty, by source)."""
    if not limit or limit >= size:
        return None
    return sorted(random.Random(f"{SUBSAMPLE_SEED}:{task}").sample(range(size), limit))


def subsamples(task_objects: dict, limit: int | None) -> dict[str, list[int]] | None:
    """lm-eval's ``samples`` argument for ``--limit``: :func:`subsample` of every task (None: no limit)."""
    if not limit:
        return None
    chosen = {name: subsample(name, len(task.eval_docs), limit) for name, task in task_objects.items()}
    return {name: indices if indices is not None else list(range(len(task_objects[name].eval_docs))) for name, indices in chosen.items()}


def is_degenerate(sample: dict) -> bool:
    """An lm-eval sample whose output is empty, or one short unit repeated (what a broken merge writes to the cap)."""
    responses = sample.get("resps") or [[""]]
    text = str(responses[0][0] if isinstance(responses[0], list) else responses[0]).strip()
    if not text:
        return True
    repeated = re.fullmatch(r"(.{1,8}?)\1{7,}(.{0,8})", text, flags=re.DOTALL)  # the unit 8+ times, then a cut-off part
    return repeated is not None and repeated.group(1).startswith(repeated.group(2))


def only_tasks(task_dict: dict, names: Sequence[str]) -> dict:
    """lm-eval's task dict restricted to ``names`` (no groups: a task outside ``samples`` would be scored in full)."""
    return {**task_dict, "tasks": {name: task_dict["tasks"][name] for name in names}}


def summed(mean: float, n: int) -> float:
    """The sum behind a mean of ``n`` values; an integer when it is one up to rounding (a share of right answers), so
    a mean combined from parts is the very float lm-eval's mean over all of them would be."""
    total = mean * n
    return float(round(total)) if abs(total - round(total)) < 1e-6 else total
