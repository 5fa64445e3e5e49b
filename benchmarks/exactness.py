"""How exact are the function-preserving defenses? max |logit difference| against the original, per family.

For each supported family (tiny random configs from hf_mergeguard.testing, as in tests/test_symmetry.py: llama with GQA and biases, mistral,
qwen2 with biases, qwen3 with QK-norm, gemma2 with tied embeddings and softcapping) and each defense, on
100-token sequences that cover every rotary period:

* float32: the protected model against the original, both in float32 (the tests assert <= 1e-4);
* bf16: each model stored and run in bf16, against the float32 original; "bf16 (unprotected)" is the error the
  bf16 cast alone makes, the floor a protected bf16 checkpoint is compared with.

And on the toy world's float32 count fine-tune (one key per defense): how far the protected weights are from the
original, how close the keyless ``realign`` attack brings them back, and the owner's round trip (the key's inverse).

Run: ``python benchmarks/exactness.py`` (about 15 s on 2 CPU cores); writes benchmarks/results/exactness.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from hf_mergeguard.architectures import SUPPORTED_MODEL_TYPES
from hf_mergeguard.attacks.realign import realigned_tensors
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.io.sources import StateDictSource
from hf_mergeguard.protect.base import DEFENSES, function_preserving_methods
from hf_mergeguard.protect.function_preserving import sample_transform
from hf_mergeguard.symmetry import transforms as symmetry
from hf_mergeguard.testing import base_and_finetune, logits_of
from hf_mergeguard.toyworld import build_toy_world

from _common import measured_on, parse_args, write_results


def _worst_relative(tensors: dict, reference: dict) -> float:
    return max(((tensors[n].double() - reference[n].double()).norm() / reference[n].double().norm()).item() for n in reference)


def toy_world_rows() -> list[str]:
    world = build_toy_world()
    model, base = Checkpoint(world.model("count")), Checkpoint(world.base)
    original = model.state_dict()
    rows = []
    for method in sorted(function_preserving_methods()):
        transform = sample_transform(method, DEFENSES.get(method).options(), model, base, torch.Generator().manual_seed(0))
        protected = dict(symmetry.transform_tensors(original.items(), [transform], model.geometry))
        restored = dict(symmetry.transform_tensors(protected.items(), symmetry.compose_inverse([transform]), model.geometry))
        realigned = dict(realigned_tensors(StateDictSource(protected, model.config), base))
        round_trip = max((restored[n].double() - original[n].double()).abs().max().item() for n in original)
        rows.append(
            f"| {method} | {_worst_relative(protected, original):.3g} | {_worst_relative(realigned, original):.3g} | {round_trip:.1e} |"
        )
    return rows


def main() -> None:
    args = parse_args(__doc__, None, "exactness.md")
    rows = []
    for model_type in SUPPORTED_MODEL_TYPES:
        with tempfile.TemporaryDirectory() as tmp:
            model, base = base_and_finetune(Path(tmp), model_type)
            original = model.state_dict()
            reference = logits_of(model.config, original)
            floor = (logits_of(model.config, original, torch.bfloat16) - reference).abs().max().item()
            for method in sorted(function_preserving_methods()):
                worst32, worst16 = 0.0, 0.0
                for seed in range(3):
                    transform = sample_transform(method, DEFENSES.get(method).options(), model, base, torch.Generator().manual_seed(seed))
                    protected = dict(symmetry.transform_tensors(original.items(), [transform], model.geometry))
                    worst32 = max(worst32, (logits_of(model.config, protected) - reference).abs().max().item())
                    bf16 = {k: v.to(torch.bfloat16) for k, v in protected.items()}
                    worst16 = max(worst16, (logits_of(model.config, bf16, torch.bfloat16) - reference).abs().max().item())
                rows.append((model_type, method, worst32, worst16, floor, reference.abs().max().item()))
                print(rows[-1], flush=True)
    lines = [
        "# Exactness of the function-preserving defenses",
        "",
        measured_on("exactness.py") + f" torch {torch.__version__}.",
        "Tiny random models, 2 sequences x 100 tokens (longer than every rotary period), worst of 3 random keys.",
        "",
        "| family | defense | max abs dlogit float32 | max abs dlogit bf16 | bf16 cast alone (unprotected) | max abs logit |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c:.1e} | {d:.1e} | {e:.1e} | {f:.2f} |" for a, b, c, d, e, f in rows]
    lines += [
        "",
        "Toy world, count fine-tune (float32), key from seed 0. Distances: the worst tensor's ||w - w_original|| / ||w_original||.",
        "",
        "| defense | protected | re-aligned to the base (no key) | owner's round trip, max abs error |",
        "|---|---|---|---|",
        *toy_world_rows(),
    ]
    write_results(args.results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
