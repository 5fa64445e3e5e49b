"""PaRaMS ("Disrupting Model Merging: A Parameter-Level Defense Without Sacrificing Accuracy", arXiv:2503.07661;
official code ISCT-W/PaRaMS), function-preserving.

The MLP neurons are permuted to be as unlike the base's as possible (Hungarian assignment minimising the similarity
of each position's neuron with the base's neuron there, as the official code does), and each attention dim is scaled
by alpha ~ U(0.05, 20): q and v rows by alpha, k rows and o_proj columns by 1/alpha. Under RoPE alpha is shared by both
dims of a rotary pair and by every query head of a KV group; in QK-norm models the q/k part goes into the norm gains.
The paper's dropout-based pruning is absent from its official code and from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..io.checkpoint import Checkpoint
from ..symmetry import matching, transforms
from ..symmetry.transforms import BlockTransform
from .base import DefenseSpec, register_defense
from .function_preserving import no_checks, runner, uniform


@dataclass
class ParamsConfig:
    """PaRaMS options (defaults: the official code's)."""

    permutation: str = "mismatch"
    head_scale_low: float = 0.05
    head_scale_high: float = 20.0

    def __post_init__(self):
        if self.permutation not in ("mismatch", "random"):
            raise ConfigError(f"params.permutation must be 'mismatch' or 'random', not {self.permutation!r}.")
        if not 0 < self.head_scale_low <= self.head_scale_high:
            raise ConfigError("params.head_scale_low and head_scale_high must satisfy 0 < low <= high.")

    def public_parameters(self) -> dict:
        return {
            "MLP permutation": f"{self.permutation} (vs the base)" if self.permutation == "mismatch" else "random",
            "attention scale": f"U({self.head_scale_low:g}, {self.head_scale_high:g}), RoPE pair- and KV-group-shared",
        }

    def sample_block(self, model: Checkpoint, base: Checkpoint, layer: int, generator: torch.Generator) -> BlockTransform:
        geometry = model.geometry
        if self.permutation == "mismatch":
            permutation = mismatch_permutation(model, base, layer, generator)
        else:
            permutation = transforms.random_permutation(geometry.intermediate_size, generator)
        kv, hd, half = geometry.num_kv_heads, geometry.head_dim, geometry.rotary_dim // 2
        low, high = self.head_scale_low, self.head_scale_high

        def pair_scales():
            return transforms.pair_constant(
                uniform((half,), low, high, generator), geometry, uniform((hd - 2 * half,), low, high, generator)
            )

        block = BlockTransform(mlp_permutation=permutation)
        if geometry.qk_norm:
            block.qk_norm_scale = pair_scales()  # shared by every head: the norm gains are
        else:
            block.qk = torch.stack([torch.diag(pair_scales()) for _ in range(kv)])
        block.vo = torch.stack([torch.diag(uniform((hd,), low, high, generator)) for _ in range(kv)])
        return block


def mismatch_permutation(model: Checkpoint, base: Checkpoint, layer: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """PaRaMS's MLP permutation for one block: position i gets the fine-tuned neuron least like base neuron i.

    A neuron is its gate row, up row and down column; the assignment minimises the summed similarity, i.e.
    maximises the mismatch with the base (exact up to ``matching.EXACT_LIMIT`` neurons, see ``matching.py``).
    """
    g = model.geometry
    n = g.intermediate_size

    def neurons(checkpoint: Checkpoint) -> list[torch.Tensor]:
        return [
            matching.features(checkpoint.get(g.mlp(layer, "gate_proj")), n, normalise=False),
            matching.features(checkpoint.get(g.mlp(layer, "up_proj")), n, normalise=False),
            matching.features(checkpoint.get(g.mlp(layer, "down_proj")).T, n, normalise=False),
        ]

    return matching.mismatch(neurons(base), neurons(model), generator)


register_defense(
    DefenseSpec(
        name="params",
        options=ParamsConfig,
        run=runner("params"),
        stack_rank=30,
        card_text=(
            "PaRaMS (function-preserving): the MLP neurons are permuted to mismatch the base's and attention dims are "
            "rescaled (RoPE- and GQA-exact), so the model computes the same function from weights that no longer line "
            "up with other fine-tunes of the base."
        ),
        reference="Disrupting Model Merging: A Parameter-Level Defense Without Sacrificing Accuracy (arXiv:2503.07661)",
        function_preserving=True,
        check=no_checks,
    )
)
