"""Bridging tensors and ``transformers`` models: build a causal LM on tensors in memory, and save one as a folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..architectures import LM_HEAD
from ..errors import CheckpointError
from .safetensors_format import layout_of
from .writer import Companions, write_checkpoint


def model_from_state_dict(
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
):
    """Build a ``transformers`` causal LM from a config dict and tensors already in memory.

    The model may share memory with ``state_dict`` (no copy is made): do not modify one through the other.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.utils import logging as hf_logging

    config = dict(config)
    model_type = config.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **config)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(hf_config)]
    tensors = dict(state_dict)
    if hf_config.tie_word_embeddings:
        tensors.pop(LM_HEAD, None)
    hf_logging.disable_progress_bar()
    # from_pretrained(None, state_dict=...) builds on the meta device, assigns our tensors and computes the
    # non-persistent buffers (RoPE frequencies, embedding scales) for real; it also ties embeddings.
    model = model_class.from_pretrained(None, config=hf_config, state_dict=tensors, dtype=dtype or "auto")
    parameters = dict(model.named_parameters(remove_duplicate=False))
    unexpected = [name for name in tensors if name not in parameters]
    missing = [n for n in parameters if n not in tensors and not (hf_config.tie_word_embeddings and n == LM_HEAD)]
    if unexpected or missing:
        raise CheckpointError(f"Weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    model.to(device)
    model.eval()
    return model


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's tensors as stored on disk (lm_head dropped when tied to the embeddings)."""
    tensors = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        tensors.pop(LM_HEAD, None)
    return tensors


def save_model(
    model: torch.nn.Module,
    target: str | os.PathLike,
    *,
    tokenizer=None,
    companions_from: Companions | None = None,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write an in-memory ``transformers`` model (and optionally its tokenizer) as a checkpoint folder."""
    tensors = model_state_dict(model)
    config = model.config.to_dict()
    extra: dict[str, str | bytes] = {}
    if tokenizer is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            for file in Path(tmp).iterdir():
                extra[file.name] = file.read_bytes()
    generation = getattr(model, "generation_config", None)
    if generation is not None and companions_from is None:
        extra["generation_config.json"] = generation.to_json_string()
    return write_checkpoint(
        target,
        tensors.items(),
        layout_of(tensors),
        companions_from=companions_from,
        config=_clean_config(config),
        metadata=metadata,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        extra_files=extra,
    )


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    """Drop runtime-only keys that ``to_dict`` adds (they are not part of a saved config.json)."""
    for key in ("_name_or_path", "transformers_version_runtime"):
        config.pop(key, None)
    return config
