"""Run by tests/test_selftest.py under torchrun: a dynamic queue of jobs of uneven cost over the launched processes."""

import json
import sys
import time

from accelerate import Accelerator

from hf_mergeguard.distributed import run_jobs


def job(index: int) -> dict:
    time.sleep(6.0 if index == 0 else 0.02)  # job 0 is as long as all the others together, and more
    return {"index": index, "square": index * index, "rank": Accelerator().process_index}


if __name__ == "__main__":
    accelerator = Accelerator(cpu=True)
    first = run_jobs(list(range(24)), job, accelerator=accelerator, progress=False)
    second = run_jobs(list(range(5)), lambda i: -i, accelerator=accelerator, progress=False)  # a second queue after it
    if accelerator.is_main_process:
        with open(sys.argv[1], "w") as handle:
            json.dump({"first": first, "second": second, "processes": accelerator.num_processes}, handle)
    accelerator.end_training()
