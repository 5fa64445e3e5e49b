"""Independent jobs split across the processes of an ``accelerate launch`` (or ``torchrun``): N GPUs, N jobs at once.

Used by the self-test's matrix of merges and by MergeGuard's exact criticality.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def run_jobs(
    jobs: Sequence[Any], worker: Callable[[Any], Any], *, accelerator=None, desc: str = "self-test", progress: bool = True
) -> list[Any]:
    """Run ``worker`` on every job, split across the accelerator's processes when there are several; the results
    come back in job order on every process (``split_between_processes`` + ``gather_object``)."""
    from tqdm.auto import tqdm

    if accelerator is None or accelerator.num_processes == 1:
        return [worker(job) for job in tqdm(jobs, desc=desc, disable=not progress, leave=False)]
    from accelerate.utils import gather_object

    with accelerator.split_between_processes(list(jobs)) as mine:
        results = [worker(job) for job in tqdm(mine, desc=f"{desc} [rank {accelerator.process_index}]", disable=not progress, leave=False)]
    return gather_object(results)
