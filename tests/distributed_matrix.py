"""Run by tests/test_selftest.py under torchrun: the self-test matrix split over the launched processes."""

import json
import sys

from accelerate import Accelerator

from hf_mergeguard.evaluation import load_tokenizer
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.selftest.config import SelfTestConfig
from hf_mergeguard.selftest.freeriders import FreeRider, selftest_evaluator
from hf_mergeguard.selftest.matrix import run_selftest
from hf_mergeguard.toyworld import build_toy_world


def matrix(world, accelerator=None) -> dict:
    config = SelfTestConfig(methods=["ties", "dare_linear"], limit=24, batch_size=64)  # a random method: seeds per tensor
    riders = [FreeRider(Checkpoint(world.model("rev")), ["toy_rev"])]
    report = run_selftest(
        base=Checkpoint(world.base),
        protected=Checkpoint(world.model("count")),
        tokenizer=load_tokenizer(world.base),
        evaluator=selftest_evaluator(["toy_count"], [str(world.tasks)], riders, config),
        tasks=["toy_count"],
        config=config,
        freeriders=riders,
        accelerator=accelerator,
        progress=False,
    )
    return report.to_dict()


if __name__ == "__main__":
    accelerator = Accelerator(cpu=True)
    report = matrix(build_toy_world(progress=False), accelerator)
    if accelerator.is_main_process:
        with open(sys.argv[1], "w") as handle:
            json.dump({"merges": report["merges"], "standalone": report["standalone"], "processes": accelerator.num_processes}, handle)
    accelerator.end_training()  # destroys the process group: gloo threads left to interpreter exit can abort it
