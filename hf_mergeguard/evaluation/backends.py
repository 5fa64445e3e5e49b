"""Which engine lm-eval generates with: ``hf`` (``transformers``, the default: scores the model in memory) or
``vllm`` (lm-eval's ``vllm`` model type, where the vllm package is installed: much faster generation on GPUs).

vLLM loads a model from a folder, so a model held in memory (a merge) is written to a temporary folder first and
moved off the GPU while vLLM holds it; the scores can differ from ``hf`` in the last greedy decisions (other kernels),
so one run keeps one backend. Code tasks run in their sandboxed child with ``hf`` whatever the backend.
"""

from __future__ import annotations

import contextlib
import tempfile
from importlib.util import find_spec
from pathlib import Path

from ..errors import ConfigError

EVAL_BACKENDS = ("hf", "vllm")


def check_backend(name: str) -> None:
    """Refuse, before any work, a backend that is unknown or not installed."""
    if name not in EVAL_BACKENDS:
        raise ConfigError(f"Unknown --eval-backend {name!r}.", f"Use one of: {', '.join(EVAL_BACKENDS)}.")
    if name == "vllm" and find_spec("vllm") is None:
        raise ConfigError(
            "--eval-backend vllm needs the vllm package, which is not installed.",
            "pip install vllm (GPU machines; see vLLM's install guide), or use --eval-backend hf.",
        )


def vllm_class():
    """lm-eval's vLLM model class (the boundary the tests fake: vllm needs a GPU)."""
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM


@contextlib.contextmanager
def vllm_model(model, tokenizer, *, batch_size: int, seed: int, max_model_len: int | None = None):
    """An lm-eval vLLM model of the in-memory ``model``: written to a temporary folder, the in-memory copy moved to the
    CPU while vLLM holds the GPU, and moved back after."""
    from ..io.hf_models import save_model

    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="hfmg-vllm-") as tmp:
        folder = save_model(model, Path(tmp) / "model", tokenizer=tokenizer)
        model.to("cpu")
        lm = vllm_class()(
            pretrained=str(folder),
            tokenizer=str(folder),
            dtype="auto",
            batch_size=batch_size,
            seed=seed,
            max_model_len=max_model_len,
            trust_remote_code=False,
        )
        try:
            yield lm
        finally:
            del lm
            model.to(device)
