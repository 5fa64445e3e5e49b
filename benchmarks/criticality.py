"""Fast vs exact criticality on the toy world's count fine-tune (README, "MergeGuard: what it does here").

Run by hand (about a minute on 2 CPU cores with the toy world cached):

    python benchmarks/criticality.py [--results benchmarks/results/criticality.md]

Exact is the paper's (lm-eval on the 300 test prompts once per layer variant); fast is ours with every
calibration size x check factor below. Costs: model variants scored, example passes (one example, one forward
pass; a backward pass counts two; a generated answer counts one), tokens, seconds.
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

from hf_mergeguard.checkpoint import Checkpoint
from hf_mergeguard.data import load_train_examples
from hf_mergeguard.evaluation import Evaluator, load_tokenizer
from hf_mergeguard.protect.criticality import agreement, exact_criticality, fast_criticality
from hf_mergeguard.protect.mergeguard import MergeGuardConfig
from hf_mergeguard.protect.negation import negation_units
from hf_mergeguard.toyworld import build_toy_world

CALIBRATION_SIZES = (32, 64, 128)
CHECK_FACTORS = (1, 2, 3)


def short(unit: str) -> str:
    return unit.replace("model.layers.", "L").replace(".weight", "").replace("self_attn.", "").replace("mlp.", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "criticality.md")
    args = parser.parse_args()

    world = build_toy_world()
    model, base = Checkpoint(world.model("count")), Checkpoint(world.base)
    tokenizer = load_tokenizer(model.path)
    units = negation_units(model.geometry, model.tensor_names)
    theta, base_state = model.state_dict(), base.state_dict()
    defaults = MergeGuardConfig()
    evaluator = Evaluator(["toy_count"], include_tasks=[str(world.tasks)], batch_size=128)
    exact = exact_criticality(model.config, theta, base_state, units, tokenizer=tokenizer, evaluator=evaluator,
                              exclude_share=defaults.exclude_share, progress=False)
    rows = [
        "| mode | layers kept | agreement with exact | variants | example passes | tokens | seconds |",
        "|---|---|---|---|---|---|---|",
        f"| exact (lm-eval) | {', '.join(map(short, exact.excluded))} | – | {exact.variants} | {exact.example_passes:,} "
        f"| {exact.tokens:,} | {exact.seconds:.1f} |",
    ]
    examples = load_train_examples(str(world.data("count", "train")))
    for size in CALIBRATION_SIZES:
        for factor in CHECK_FACTORS:
            fast = fast_criticality(model.config, theta, base_state, units, tokenizer=tokenizer, calibration=examples[:size],
                                    exclude_share=defaults.exclude_share, check_factor=factor, max_length=64)
            marker = " (default)" if (size, factor) == (defaults.calibration_size, defaults.check_factor) else ""
            rows.append(
                f"| fast, {size} examples, check factor {factor}{marker} | {', '.join(map(short, fast.excluded))} "
                f"| {100 * agreement(exact, fast):.0f}% | {fast.variants} "
                f"| {fast.example_passes:,} ({exact.example_passes / fast.example_passes:.1f}x fewer) "
                f"| {fast.tokens:,} ({exact.tokens / fast.tokens:.1f}x fewer) | {fast.seconds:.1f} |"
            )
    text = (
        "# Criticality: fast vs exact on the toy world\n\n"
        f"Measured {datetime.date.today().isoformat()} on {platform.node() or 'unknown'} "
        f"({platform.machine()}, CPU only) with `python benchmarks/criticality.py`; count fine-tune, "
        f"{len(units)} layers, {len(exact.excluded)} kept.\n\n" + "\n".join(rows) + "\n"
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
