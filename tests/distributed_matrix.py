"""Run by tests/test_selftest.py under torchrun: the self-test matrix split over the launched processes."""

import json
import sys

from accelerate import Accelerator

from hf_mergeguard.checkpoint import Checkpoint
from hf_mergeguard.evaluation import load_tokenizer
from hf_mergeguard.selftest import FreeRider, SelfTestConfig, run_selftest
from hf_mergeguard.toyworld import build_toy_world


def matrix(world, accelerator=None):
    config = SelfTestConfig(
        tasks=["toy_count"], include_tasks=[str(world.tasks)], methods=["task_arithmetic", "dare_linear"], limit=40, batch_size=64
    )
    return run_selftest(
        base=Checkpoint(world.base),
        protected=Checkpoint(world.model("count")),
        tokenizer=load_tokenizer(world.base),
        config=config,
        freeriders=[FreeRider(Checkpoint(world.model("rev")), ["toy_rev"])],
        accelerator=accelerator,
        progress=False,
    )


if __name__ == "__main__":
    accelerator = Accelerator(cpu=True)
    report = matrix(build_toy_world(progress=False), accelerator)
    if accelerator.is_main_process:
        with open(sys.argv[1], "w") as handle:
            json.dump({"merges": report["merges"], "standalone": report["standalone"], "processes": accelerator.num_processes}, handle)
    accelerator.end_training()  # destroys the process group: gloo threads left to interpreter exit can abort it
