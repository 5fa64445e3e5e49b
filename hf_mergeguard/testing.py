"""Random-weight checkpoints in a real HF layout (mergekit's ``make_picollama`` habit).

Used by the tests (one tiny model per supported family) and by the benchmarks (1B- and 7B-shaped models,
written tensor by tensor so that generating them needs no more memory than one tensor).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .architectures import geometry_from_config
from .checkpoint import TensorSpec, stamp_metadata, write_checkpoint

PICO_SIZES = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)

FAMILY_EXTRAS: dict[str, dict[str, Any]] = {
    "llama": {"architectures": ["LlamaForCausalLM"], "tie_word_embeddings": False},
    "mistral": {"architectures": ["MistralForCausalLM"], "tie_word_embeddings": False},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "tie_word_embeddings": False},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "head_dim": 16, "tie_word_embeddings": False},
    "gemma2": {
        "architectures": ["Gemma2ForCausalLM"],
        "head_dim": 16,
        "tie_word_embeddings": True,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "query_pre_attn_scalar": 16,
        "sliding_window": 64,
    },
}

LLAMA_2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
)
LLAMA_1B = dict(  # Llama-3.2-1B-like sizes with a Llama-2 vocabulary
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=4096,
)


def pico_config(model_type: str = "llama", **overrides: Any) -> dict[str, Any]:
    """A config.json dict for a tiny model of ``model_type``."""
    config = {"model_type": model_type, **PICO_SIZES, **FAMILY_EXTRAS[model_type], "rms_norm_eps": 1e-6}
    config.update(overrides)
    return config


def random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        # Norm gains near 1 (Gemma stores gain - 1, so near 0 there is also fine: both stay well scaled).
        tensor = 1.0 + 0.1 * torch.randn(shape, generator=generator)
    else:
        fan_in = shape[-1] if len(shape) > 1 else 1
        tensor = torch.randn(shape, generator=generator) / max(1.0, fan_in) ** 0.5
    return tensor.to(dtype)


def write_random_checkpoint(
    folder: str | os.PathLike,
    config: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    max_shard_size: int | str = "5GB",
    like: Path | None = None,
    noise: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Write a random checkpoint for ``config`` one tensor at a time.

    Args:
        like: if given, start from this checkpoint's tensors and add ``noise`` x a random tensor of the same
            scale: a stand-in "fine-tune" of ``like`` with the same layout.
    """
    from .checkpoint import Checkpoint

    geometry = geometry_from_config(config)
    names = geometry.expected_tensor_names()
    layout = {name: TensorSpec(dtype, geometry.expected_shape(name)) for name in names}
    generator = torch.Generator().manual_seed(seed)
    source = Checkpoint(like) if like is not None else None

    def tensors():
        for name in names:
            tensor = random_tensor(name, layout[name].shape, torch.float32, generator)
            if source is not None:
                tensor = source.get(name).float() + noise * tensor
            yield name, tensor.to(dtype)

    config = {**config, "torch_dtype": str(dtype).replace("torch.", "")}
    return write_checkpoint(
        folder,
        tensors(),
        layout,
        config=config,
        metadata=stamp_metadata(method="random"),
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )
