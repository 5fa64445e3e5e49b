"""Independent jobs shared by the processes of an ``accelerate launch`` (or ``torchrun``): N GPUs, N jobs at once.

Used by the self-test's matrix of merges, the adaptive attacks' scorings and MergeGuard's exact criticality.

The jobs go through a dynamic queue: each process takes the next job when it is free (an atomic counter in the
process group's key-value store), so a process that drew cheap jobs takes more, and no process runs hours behind
the others with a fixed block of expensive ones (a broken merge generates to the token cap; a good one stops early).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

_queues = itertools.count()  # every process calls run_jobs in the same order: the n-th call is the same queue everywhere


def run_jobs(
    jobs: Sequence[Any], worker: Callable[[Any], Any], *, accelerator=None, desc: str = "self-test", progress: bool = True
) -> list[Any]:
    """Run ``worker`` on every job, shared by the accelerator's processes when there are several (a dynamic queue);
    the results come back in job order on every process."""
    from .progress import progress_bar

    jobs = list(jobs)
    if accelerator is None or accelerator.num_processes == 1:
        return [worker(job) for job in progress_bar(jobs, desc=desc, disable=not progress, leave=False)]
    from accelerate.utils import gather_object

    claim = _claimer(next(_queues))
    done: dict[int, Any] = {}
    bar = progress_bar(total=len(jobs), desc=f"{desc} [rank {accelerator.process_index}]", disable=not progress, leave=False)
    while (index := claim()) < len(jobs):
        done[index] = worker(jobs[index])
        bar.update()
    bar.close()
    gathered: dict[int, Any] = {}
    for part in gather_object([done]):
        gathered.update(part)
    return [gathered[index] for index in range(len(jobs))]


def _claimer(queue: int) -> Callable[[], int]:
    """``claim() -> index``: the next unclaimed job of queue ``queue``, from the process group's store (the
    ``MASTER_ADDR`` TCP store of ``torchrun`` / ``accelerate launch``): ``add`` is atomic over every process."""
    from torch.distributed.distributed_c10d import _get_default_store

    store = _get_default_store()
    key = f"hf_mergeguard/queue/{queue}"  # a key per call: no reset, no barrier

    def claim() -> int:
        return store.add(key, 1) - 1

    return claim
