"""Fast vs exact criticality on the toy world's count fine-tune (README, "MergeGuard: what it does here").

Run by hand (about a minute on 2 CPU cores with the toy world cached):

    python benchmarks/criticality.py [--results benchmarks/results/criticality.md]

Exact is the paper's (lm-eval on the 300 test prompts once per layer variant); fast is ours with every
calibration size x check factor below. Costs: model variants scored, example passes (one example, one forward
pass; a backward pass counts two; a generated answer counts one), tokens, seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import measured_on, parse_args, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_mergeguard import criticality_inputs  # noqa: E402

from hf_mergeguard.data import load_train_examples  # noqa: E402
from hf_mergeguard.protect.criticality import agreement, fast_criticality  # noqa: E402
from hf_mergeguard.protect.mergeguard import MergeGuardConfig  # noqa: E402
from hf_mergeguard.toyworld import build_toy_world  # noqa: E402

CALIBRATION_SIZES = (32, 64, 128)
CHECK_FACTORS = (1, 2, 3)


def short(unit: str) -> str:
    return unit.replace("model.layers.", "L").replace(".weight", "").replace("self_attn.", "").replace("mlp.", "")


def main() -> None:
    args = parse_args(__doc__, None, "criticality.md")
    world = build_toy_world()
    model, units, theta, base_state, tokenizer, exact = criticality_inputs(world)
    defaults = MergeGuardConfig()
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
        "# Criticality: fast vs exact on the toy world\n\n" + measured_on("criticality.py")
        + f" Count fine-tune, {len(units)} layers, {len(exact.excluded)} kept.\n\n" + "\n".join(rows) + "\n"
    )
    write_results(args.results, text)


if __name__ == "__main__":
    main()
