"""MergeLock ("Model Unmerging: Making Your Models Unmergeable for Secure Model Sharing", arXiv:2509.01548),
function-preserving, with RoPE-correct maps.

Independent random invertible QK and VO maps per KV group: per rotary pair a rotation by a uniform angle scaled by a
log-uniform factor in [1/qk_scale, qk_scale] (the paper's dense random matrix would break RoPE), and per KV head a
random matrix with condition number <= vo_condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..io.checkpoint import Checkpoint
from ..symmetry import transforms
from ..symmetry.transforms import BlockTransform
from .base import DefenseSpec, register_defense
from .function_preserving import no_checks, runner


@dataclass
class MergeLockConfig:
    """MergeLock options: how far the QK and VO maps may stretch (bf16 accuracy falls as they grow)."""

    qk_scale: float = 4.0
    vo_condition: float = 10.0

    def __post_init__(self):
        if self.qk_scale < 1 or self.vo_condition < 1:
            raise ConfigError("mergelock.qk_scale and mergelock.vo_condition must be >= 1.")

    def public_parameters(self) -> dict:
        return {
            "QK": f"scaled rotation per RoPE pair, scale in [1/{self.qk_scale:g}, {self.qk_scale:g}]",
            "VO": f"random invertible per KV head, condition <= {self.vo_condition:g}",
        }

    def sample_block(self, model: Checkpoint, base: Checkpoint, layer: int, generator: torch.Generator) -> BlockTransform:
        geometry = model.geometry
        block = BlockTransform(
            vo=transforms.stack_per_kv_head(
                lambda: transforms.random_conditioned(geometry.head_dim, self.vo_condition, generator), geometry
            )
        )
        if geometry.qk_norm:
            block.qk = transforms.stack_per_kv_head(lambda: transforms.qk_norm_signs(geometry, generator), geometry)
            half = geometry.rotary_dim // 2
            block.qk_norm_scale = transforms.pair_constant(
                transforms.log_uniform((half,), self.qk_scale, generator),
                geometry,
                transforms.log_uniform((geometry.head_dim - 2 * half,), self.qk_scale, generator),
            )
        else:
            block.qk = transforms.stack_per_kv_head(
                lambda: transforms.rope_commutant(geometry, generator, max_scale=self.qk_scale), geometry
            )
        return block


register_defense(
    DefenseSpec(
        name="mergelock",
        options=MergeLockConfig,
        run=runner("mergelock"),
        stack_rank=50,
        card_text=(
            "MergeLock (function-preserving): random invertible maps on the query-key and value-output branches of "
            "every attention block (per RoPE pair and KV group), so the weights no longer line up with other "
            "fine-tunes of the base."
        ),
        reference="Model Unmerging: Making Your Models Unmergeable for Secure Model Sharing (arXiv:2509.01548)",
        function_preserving=True,
        check=no_checks,
    )
)
