"""How exact are the function-preserving defenses? max |logit difference| against the original, per family.

For each supported family (tiny random configs as in tests/test_symmetry.py: llama with GQA and biases, mistral,
qwen2 with biases, qwen3 with QK-norm, gemma2 with tied embeddings and softcapping) and each defense, on
100-token sequences that cover every rotary period:

* float32: the protected model against the original, both in float32 (the tests assert <= 1e-4);
* bf16: each model stored and run in bf16, against the float32 original; "bf16 (unprotected)" is the error the
  bf16 cast alone makes, the floor a protected bf16 checkpoint is compared with.

Run: ``python benchmarks/exactness.py`` (about 30 s on 2 CPU cores); writes benchmarks/results/exactness.md.
"""

from __future__ import annotations

import datetime
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_symmetry import _logits, _models  # noqa: E402

from hf_mergeguard.architectures import SUPPORTED_MODEL_TYPES  # noqa: E402
from hf_mergeguard.protect import symmetry  # noqa: E402
from hf_mergeguard.protect.function_preserving import FUNCTION_PRESERVING, sample_transform  # noqa: E402


def main() -> None:
    rows = []
    for model_type in SUPPORTED_MODEL_TYPES:
        with tempfile.TemporaryDirectory() as tmp:
            model, base = _models(Path(tmp), model_type)
            original = model.state_dict()
            reference = _logits(model.config, original)
            floor = (_logits(model.config, original, torch.bfloat16) - reference).abs().max().item()
            for method in sorted(FUNCTION_PRESERVING):
                worst32, worst16 = 0.0, 0.0
                for seed in range(3):
                    transform = sample_transform(method, FUNCTION_PRESERVING[method](), model, base, torch.Generator().manual_seed(seed))
                    protected = dict(symmetry.transform_tensors(original.items(), [transform], model.geometry))
                    worst32 = max(worst32, (_logits(model.config, protected) - reference).abs().max().item())
                    bf16 = {k: v.to(torch.bfloat16) for k, v in protected.items()}
                    worst16 = max(worst16, (_logits(model.config, bf16, torch.bfloat16) - reference).abs().max().item())
                rows.append((model_type, method, worst32, worst16, floor, reference.abs().max().item()))
                print(rows[-1], flush=True)
    lines = [
        "# Exactness of the function-preserving defenses",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or platform.system()}, torch {torch.__version__}; "
        f"{datetime.date.today().isoformat()}. Command: `python benchmarks/exactness.py`.",
        "Tiny random models, 2 sequences x 100 tokens (longer than every rotary period), worst of 3 random keys.",
        "",
        "| family | defense | max abs dlogit float32 | max abs dlogit bf16 | bf16 cast alone (unprotected) | max abs logit |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c:.1e} | {d:.1e} | {e:.1e} | {f:.2f} |" for a, b, c, d, e, f in rows]
    out = Path(__file__).parent / "results" / "exactness.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
