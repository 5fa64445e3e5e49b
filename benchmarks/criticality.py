"""Fast vs exact criticality on the toy world's count fine-tune (docs/methods.md, "MergeGuard").

Run by hand (about a minute on 2 CPU cores with the toy world cached):

    python benchmarks/criticality.py [--results benchmarks/results/criticality.md]

Exact is the paper's (lm-eval on the 300 test prompts once per layer variant); fast is ours with every
calibration size x check factor below. A second table does the same on a mid-size random-weight Llama (8 blocks,
width 512, 72 layers) fine-tuned here for 60 steps on the count data: it has no task skill for lm-eval to
score, so its reference is the exhaustive calibration-loss check (every layer reset and scored). Costs: model
variants scored, example passes (one example, one forward pass; a backward pass counts two; a generated answer
counts one), tokens, seconds.
"""

from __future__ import annotations

from pathlib import Path

from hf_mergeguard.data import load_train_examples
from hf_mergeguard.protect.mergeguard.config import MergeGuardConfig
from hf_mergeguard.protect.mergeguard.criticality import agreement, fast_criticality
from hf_mergeguard.testing import criticality_inputs
from hf_mergeguard.toyworld import build_toy_world

from _common import measured_on, parse_args, write_results

CALIBRATION_SIZES = (32, 64, 128)
CHECK_FACTORS = (1, 2, 3)


def short(unit: str) -> str:
    return unit.replace("model.layers.", "L").replace(".weight", "").replace("self_attn.", "").replace("mlp.", "")


MID_SIZE = dict(
    hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256
)


def mid_size_table(world, examples) -> str:
    """Fast (default settings) vs every layer checked, on a random-weight Llama fine-tuned here on the count data."""
    import tempfile

    import torch

    from hf_mergeguard.evaluation import load_tokenizer
    from hf_mergeguard.io.checkpoint import Checkpoint
    from hf_mergeguard.io.hf_models import model_state_dict
    from hf_mergeguard.protect.mergeguard.negation import negation_units
    from hf_mergeguard.testing import FAMILY_EXTRAS, write_random_checkpoint
    from hf_mergeguard.training import TrainingConfig, train_causal_lm

    toy = Checkpoint(world.model("count"))
    tokenizer = load_tokenizer(toy.path)
    config = {"model_type": "llama", "vocab_size": toy.config["vocab_size"], **MID_SIZE, **FAMILY_EXTRAS["llama"], "rms_norm_eps": 1e-5}
    with tempfile.TemporaryDirectory() as folder:
        base = Checkpoint(write_random_checkpoint(Path(folder) / "base", config, seed=0))
        model = base.load_model(dtype=torch.float32)
        base_state = {k: v.clone() for k, v in base.state_dict().items()}
    train_causal_lm(
        model, tokenizer, examples[128:], TrainingConfig(steps=60, learning_rate=1e-3, batch_size=16, max_length=64), progress=False
    )
    theta = {k: v.detach().clone() for k, v in model_state_dict(model).items()}
    units = negation_units(base.geometry, theta)
    defaults = MergeGuardConfig()
    calibration = examples[: defaults.calibration_size]
    common = dict(tokenizer=tokenizer, calibration=calibration, exclude_share=defaults.exclude_share, max_length=64)
    every = fast_criticality(config, theta, base_state, units, check_factor=len(units), **common)
    fast = fast_criticality(config, theta, base_state, units, check_factor=defaults.check_factor, **common)
    rows = [
        "| mode | layers kept | agreement with every-layer check | variants | example passes | tokens | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, result in (("every layer checked", every), ("fast (default)", fast)):
        rows.append(
            f"| {label} | {', '.join(map(short, result.excluded))} | {100 * agreement(every, result):.0f}% | {result.variants} "
            f"| {result.example_passes:,} ({every.example_passes / result.example_passes:.1f}x fewer) | {result.tokens:,} "
            f"| {result.seconds:.1f} |"
        )
    return f"{len(units)} layers, {len(fast.excluded)} kept, {len(calibration)} calibration examples.\n\n" + "\n".join(rows)


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
            fast = fast_criticality(
                model.config,
                theta,
                base_state,
                units,
                tokenizer=tokenizer,
                calibration=examples[:size],
                exclude_share=defaults.exclude_share,
                check_factor=factor,
                max_length=64,
            )
            marker = " (default)" if (size, factor) == (defaults.calibration_size, defaults.check_factor) else ""
            rows.append(
                f"| fast, {size} examples, check factor {factor}{marker} | {', '.join(map(short, fast.excluded))} "
                f"| {100 * agreement(exact, fast):.0f}% | {fast.variants} "
                f"| {fast.example_passes:,} ({exact.example_passes / fast.example_passes:.1f}x fewer) "
                f"| {fast.tokens:,} ({exact.tokens / fast.tokens:.1f}x fewer) | {fast.seconds:.1f} |"
            )
    text = (
        "# Criticality: fast vs exact on the toy world\n\n"
        + measured_on("criticality.py")
        + f" Count fine-tune, {len(units)} layers, {len(exact.excluded)} kept.\n\n"
        + "\n".join(rows)
        + "\n\n"
        + "## Mid-size random-weight Llama (reference: every layer's calibration loss)\n\n"
        + mid_size_table(world, examples)
        + "\n"
    )
    write_results(args.results, text)


if __name__ == "__main__":
    main()
