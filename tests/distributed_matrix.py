"""Run by tests/test_selftest.py under torchrun: the self-test matrix split over the launched processes, then two
adaptive attacks that train (recover with DDP over the processes, layerwise the same steps on each)."""

import json
import sys

from accelerate import Accelerator

from hf_mergeguard.data import load_train_examples
from hf_mergeguard.evaluation import load_tokenizer
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.selftest.adaptive import run_adaptive_attacks
from hf_mergeguard.selftest.config import SelfTestConfig
from hf_mergeguard.selftest.freeriders import FreeRider, selftest_evaluator
from hf_mergeguard.selftest.matrix import run_selftest
from hf_mergeguard.toyworld import build_toy_world


def matrix(world, accelerator=None) -> dict:
    config = SelfTestConfig(  # a random method: seeds per tensor
        methods=["ties", "dare_linear"], limit=24, batch_size=64, attacks=["layerwise", "recover"], attack_steps=5, attack_examples=16
    )
    riders = [FreeRider(Checkpoint(world.model("rev")), ["toy_rev"])]
    common = dict(
        base=Checkpoint(world.base),
        protected=Checkpoint(world.model("count")),
        tokenizer=load_tokenizer(world.base),
        evaluator=selftest_evaluator(["toy_count"], [str(world.tasks)], riders, config),
        config=config,
        freeriders=riders,
        accelerator=accelerator,
        progress=False,
    )
    report = run_selftest(tasks=["toy_count"], **common)
    examples = load_train_examples(world.data("count", "train"), limit=256)
    return run_adaptive_attacks(report, examples=examples, **common).to_dict()


if __name__ == "__main__":
    accelerator = Accelerator(cpu=True)
    report = matrix(build_toy_world(progress=False), accelerator)
    if accelerator.is_main_process:
        with open(sys.argv[1], "w") as handle:
            keys = ("merges", "standalone", "robustness")
            json.dump({**{key: report[key] for key in keys}, "processes": accelerator.num_processes}, handle)
    accelerator.end_training()  # destroys the process group: gloo threads left to interpreter exit can abort it
