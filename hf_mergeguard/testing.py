"""What the tests and the benchmarks share: random-weight checkpoints in a real HF layout (mergekit's
``make_picollama`` habit), a toy world small enough for the fast test lane, and the inputs of the exactness and
criticality measurements.

Random checkpoints come as one tiny model per supported family (tests) and as 1B- and 7B-shaped models (benchmarks),
written tensor by tensor so that generating them needs no more memory than one tensor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .architectures import geometry_from_config
from .io.checkpoint import Checkpoint
from .io.hf_models import model_from_state_dict
from .io.safetensors_format import TensorSpec
from .io.writer import stamp_metadata, write_checkpoint
from .toyworld.build import ToyWorldConfig

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


# The real shapes the LLM-scale figures are for (config.json sizes of meta-llama/Llama-3.2-1B and Llama-3.1-8B).
LLAMA_3_2_1B = dict(LLAMA_1B, vocab_size=128256, head_dim=64, max_position_embeddings=131072, tie_word_embeddings=True)
LLAMA_3_1_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=131072,
    tie_word_embeddings=False,
)


def llama_config(sizes: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A config.json dict of a Llama of ``sizes`` (e.g. :data:`LLAMA_3_2_1B`)."""
    return {"model_type": "llama", **FAMILY_EXTRAS["llama"], "rms_norm_eps": 1e-5, **sizes, **overrides}


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


# --------------------------------------------------------------------------------------------------------
# A toy world for the fast lane: the default world's layout, tasks and skills, built in seconds
# --------------------------------------------------------------------------------------------------------

PICO_WORLD = ToyWorldConfig(
    train_size=256,
    test_size=16,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    base_steps=30,
    base_batch=32,
    base_warmup=5,
    finetune_steps=15,
    finetune_batch=16,
    finetune_warmup=2,
)


# --------------------------------------------------------------------------------------------------------
# Exactness of the function-preserving defenses: a base and a "fine-tune" of every family, and their logits
# --------------------------------------------------------------------------------------------------------

# rope_theta 10 makes the slowest rotary pair turn in < 50 positions, so 100-token sequences cover every
# pair's full period (at the usual 10,000 a tiny head_dim's slowest pair would barely move).
FAST_ROPE = {"rope_parameters": {"rope_type": "default", "rope_theta": 10.0}}
SEQUENCE_LENGTH = 100


def token_batch() -> torch.Tensor:
    """Two 100-token sequences of real text in the toy world's character tokenizer (ids < 64, the pico vocabulary)."""
    from .toyworld.skills import make_tokenizer, prompt_of

    tokenizer = make_tokenizer()
    texts = [prompt_of("count", "the quick brown fox jumps over the lazy dog " * 3), prompt_of("add", "12+79 " * 20)]
    ids = [tokenizer(text)["input_ids"][:SEQUENCE_LENGTH] for text in texts]
    assert all(len(row) == SEQUENCE_LENGTH for row in ids)
    return torch.tensor(ids)


def base_and_finetune(folder: Path, model_type: str, **overrides) -> tuple[Checkpoint, Checkpoint]:
    """A random pico ``model_type`` base and a "fine-tune" of it (base + 0.1 x noise), with fast RoPE; llama gets
    q/k/v/o biases, qwen3 QK-norm. Returns ``(fine-tune, base)``."""
    config = pico_config(model_type, **FAST_ROPE, **overrides)
    if model_type in ("llama", "qwen3"):
        config["attention_bias"] = model_type == "llama"
    base = write_random_checkpoint(Path(folder) / "base", config, seed=0)
    tuned = write_random_checkpoint(Path(folder) / "tuned", config, seed=1, like=base, noise=0.1)
    return Checkpoint(tuned), Checkpoint(base)


def logits_of(config: dict, tensors: dict, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The model's float32 logits on :func:`token_batch`, its weights stored and run in ``dtype``."""
    model = model_from_state_dict(config, {k: v.to(dtype) for k, v in tensors.items()}, dtype=dtype)
    with torch.no_grad():
        return model(token_batch()).logits.float()


# --------------------------------------------------------------------------------------------------------
# Criticality: the paper's exact measurement on the toy world (the reference of the fast mode)
# --------------------------------------------------------------------------------------------------------


def criticality_inputs(world):
    """The count fine-tune's units, tensors and tokenizer, and the paper's exact criticality of it."""
    from .evaluation import Evaluator, load_tokenizer
    from .protect.mergeguard.config import MergeGuardConfig
    from .protect.mergeguard.criticality import exact_criticality
    from .protect.mergeguard.negation import negation_units

    model, base = Checkpoint(world.model("count")), Checkpoint(world.base)
    tokenizer = load_tokenizer(model.path)
    units = negation_units(model.geometry, model.tensor_names)
    theta, base_state = model.state_dict(), base.state_dict()
    evaluator = Evaluator(["toy_count"], include_tasks=[str(world.tasks)], batch_size=128)
    exact = exact_criticality(
        model.config,
        theta,
        base_state,
        units,
        tokenizer=tokenizer,
        evaluator=evaluator,
        exclude_share=MergeGuardConfig().exclude_share,
        progress=False,
    )
    return model, units, theta, base_state, tokenizer, exact
