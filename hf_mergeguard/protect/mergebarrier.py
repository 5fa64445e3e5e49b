"""MergeBarrier ("Do Not Merge My Model! Safeguarding Open-Source LLMs Against Unauthorized Model Merging",
arXiv:2511.10712), its orthogonal part, function-preserving.

Per-pair rotations for QK (scale 1), Haar-random orthogonal VO maps, and for the FFN a random permutation of the
intermediate neurons. The paper's FFN "polynomial re-parameterisation" is not public and, by its own Taylor-remainder
argument, not exactly function-preserving; it is not implemented. Nor is the optional residual-stream rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..io.checkpoint import Checkpoint
from ..symmetry import transforms
from ..symmetry.transforms import BlockTransform
from .base import DefenseSpec, register_defense
from .function_preserving import no_checks, runner


@dataclass
class MergeBarrierConfig:
    """MergeBarrier options."""

    mlp_permutation: bool = True

    def public_parameters(self) -> dict:
        return {
            "QK": "rotation per RoPE pair",
            "VO": "random orthogonal per KV head",
            "FFN": "random neuron permutation" if self.mlp_permutation else "untouched",
        }

    def sample_block(self, model: Checkpoint, base: Checkpoint, layer: int, generator: torch.Generator) -> BlockTransform:
        geometry = model.geometry
        block = BlockTransform(
            vo=transforms.stack_per_kv_head(lambda: transforms.random_orthogonal(geometry.head_dim, generator), geometry)
        )
        if geometry.qk_norm:
            block.qk = transforms.stack_per_kv_head(lambda: transforms.qk_norm_signs(geometry, generator), geometry)
        else:
            block.qk = transforms.stack_per_kv_head(lambda: transforms.rope_commutant(geometry, generator), geometry)
        if self.mlp_permutation:
            block.mlp_permutation = transforms.random_permutation(geometry.intermediate_size, generator)
        return block


register_defense(
    DefenseSpec(
        name="mergebarrier",
        options=MergeBarrierConfig,
        run=runner("mergebarrier"),
        stack_rank=40,
        card_text=(
            "MergeBarrier, orthogonal part (function-preserving): random rotations of the query-key (per RoPE pair) "
            "and value-output branches and a random permutation of the MLP neurons."
        ),
        reference="Do Not Merge My Model! Safeguarding Open-Source LLMs Against Unauthorized Model Merging (arXiv:2511.10712)",
        function_preserving=True,
        check=no_checks,
    )
)
