"""Architecture geometry of the Llama family, as data in one place.

Everything a defense or an attack needs to know about a checkpoint's layout comes from here: tensor names
of attention, MLP, norms, embeddings and lm_head; head counts, KV groups, head_dim, rotary layout, biases,
QK-norm, tied embeddings. (The symmetry transforms still dispatch on the projection names within a block.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Family:
    """What differs between supported model types (the rest is shared Llama layout)."""

    model_type: str
    # per-block norm tensors besides the attention ones (names under model.layers.{i}.)
    block_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    # q/k/v biases: True, False, or the name of the config key that decides (default False)
    qkv_bias: bool | str = "attention_bias"
    o_bias: bool | str = "attention_bias"
    mlp_bias: bool | str = False
    qk_norm: bool = False
    tie_word_embeddings_default: bool = False
    # Gemma-style RMSNorm multiplies by (1 + w): a zero norm weight is identity, not zero
    norm_offset_one: bool = False
    softcapping_keys: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("llama", mlp_bias="mlp_bias"),
        Family("mistral", qkv_bias=False, o_bias=False),
        Family("qwen2", qkv_bias=True, o_bias=False),
        Family("qwen3", o_bias="attention_bias", qk_norm=True),
        Family(
            "gemma2",
            block_norms=(
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ),
            tie_word_embeddings_default=True,
            norm_offset_one=True,
            softcapping_keys=("attn_logit_softcapping", "final_logit_softcapping"),
        ),
    )
}

SUPPORTED_MODEL_TYPES = tuple(FAMILIES)

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
_BLOCK = "model.layers.{i}."
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Geometry:
    """The shape of one checkpoint, read from its config.json."""

    model_type: str
    family: Family
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rotary_dim: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    softcapping: Mapping[str, float | None] = field(default_factory=dict)

    @property
    def qk_norm(self) -> bool:
        return self.family.qk_norm

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def rotary_pairs(self) -> list[tuple[int, int]]:
        """Pairs of head dimensions that RoPE rotates together (HF ``rotate_half``: j with j + rotary_dim/2)."""
        half = self.rotary_dim // 2
        return [(j, j + half) for j in range(half)]

    # --- tensor names ---------------------------------------------------------------------------------

    def attn(self, layer: int, proj: str, kind: str = "weight") -> str:
        return _BLOCK.format(i=layer) + f"self_attn.{proj}.{kind}"

    def mlp(self, layer: int, proj: str, kind: str = "weight") -> str:
        return _BLOCK.format(i=layer) + f"mlp.{proj}.{kind}"

    def norm(self, layer: int, which: str) -> str:
        return _BLOCK.format(i=layer) + f"{which}.weight"

    def qk_norms(self, layer: int) -> tuple[str, str]:
        return (
            _BLOCK.format(i=layer) + "self_attn.q_norm.weight",
            _BLOCK.format(i=layer) + "self_attn.k_norm.weight",
        )

    def block_tensor_names(self, layer: int) -> list[str]:
        """The tensors of decoder block ``layer``, in HF's order."""
        names = []
        for proj in ATTENTION_PROJECTIONS:
            names.append(self.attn(layer, proj))
            has_bias = self.o_bias if proj == "o_proj" else self.qkv_bias
            if has_bias:
                names.append(self.attn(layer, proj, "bias"))
        if self.qk_norm:
            names.extend(self.qk_norms(layer))
        for proj in MLP_PROJECTIONS:
            names.append(self.mlp(layer, proj))
            if self.mlp_bias:
                names.append(self.mlp(layer, proj, "bias"))
        names.extend(self.norm(layer, which) for which in self.family.block_norms)
        return names

    def expected_tensor_names(self) -> list[str]:
        """Every tensor a checkpoint of this geometry stores (lm_head omitted when tied)."""
        names = [EMBED]
        for layer in range(self.num_layers):
            names.extend(self.block_tensor_names(layer))
        names.append(FINAL_NORM)
        if not self.tie_word_embeddings:
            names.append(LM_HEAD)
        return names

    def expected_shape(self, name: str) -> tuple[int, ...]:
        """The shape ``name`` must have, from the config alone."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if name in (EMBED, LM_HEAD):
            return (self.vocab_size, h)
        if name == FINAL_NORM:
            return (h,)
        layer, rest = split_layer_name(name)
        if layer is None:
            raise KeyError(name)
        table = {
            "self_attn.q_proj.weight": (q, h),
            "self_attn.k_proj.weight": (kv, h),
            "self_attn.v_proj.weight": (kv, h),
            "self_attn.o_proj.weight": (h, q),
            "self_attn.q_proj.bias": (q,),
            "self_attn.k_proj.bias": (kv,),
            "self_attn.v_proj.bias": (kv,),
            "self_attn.o_proj.bias": (h,),
            "self_attn.q_norm.weight": (self.head_dim,),
            "self_attn.k_norm.weight": (self.head_dim,),
            "mlp.gate_proj.weight": (self.intermediate_size, h),
            "mlp.up_proj.weight": (self.intermediate_size, h),
            "mlp.down_proj.weight": (h, self.intermediate_size),
            "mlp.gate_proj.bias": (self.intermediate_size,),
            "mlp.up_proj.bias": (self.intermediate_size,),
            "mlp.down_proj.bias": (h,),
        }
        if rest in table:
            return table[rest]
        if rest.endswith("layernorm.weight"):
            return (h,)
        raise KeyError(name)


def split_layer_name(name: str) -> tuple[int | None, str]:
    """``model.layers.3.mlp.up_proj.weight`` -> ``(3, "mlp.up_proj.weight")``; other names -> ``(None, name)``."""
    match = _LAYER_RE.match(name)
    if not match:
        return None, name
    return int(match.group(1)), match.group(2)


def _flag(value: bool | str, config: Mapping[str, Any]) -> bool:
    return bool(config.get(value, False)) if isinstance(value, str) else value


def geometry_from_config(config: Mapping[str, Any]) -> Geometry:
    """Read a :class:`Geometry` from a ``config.json`` dict.

    Raises:
        UnsupportedArchitectureError: the ``model_type`` is not one of :data:`SUPPORTED_MODEL_TYPES`.
    """
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedArchitectureError(
            f"Unsupported model_type {model_type!r} in config.json. Supported: {', '.join(SUPPORTED_MODEL_TYPES)}.",
            hint="hf-mergeguard knows the exact symmetries of these Llama-family architectures only; "
            "open an issue with the config.json of the model you need.",
        )
    family = FAMILIES[model_type]
    num_heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // num_heads)
    rope = config.get("rope_parameters") or {}
    partial = float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0)
    tie = config.get("tie_word_embeddings")
    return Geometry(
        model_type=model_type,
        family=family,
        num_layers=int(config["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(config["intermediate_size"]),
        num_heads=num_heads,
        num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
        head_dim=head_dim,
        vocab_size=int(config["vocab_size"]),
        rotary_dim=int(head_dim * partial),
        tie_word_embeddings=family.tie_word_embeddings_default if tie is None else bool(tie),
        qkv_bias=_flag(family.qkv_bias, config),
        o_bias=_flag(family.o_bias, config),
        mlp_bias=_flag(family.mlp_bias, config),
        softcapping={key: config.get(key) for key in family.softcapping_keys},
    )
