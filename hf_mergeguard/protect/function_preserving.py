"""PaRaMS, MergeLock and MergeBarrier: defenses that move a model in weight space without changing its function.

Each samples one :class:`~hf_mergeguard.protect.symmetry.BlockTransform` per decoder block, from the exact
symmetries of ``symmetry.py`` (RoPE commutant, GQA groups, QK-norm, biases), and streams the checkpoint through
it one tensor at a time. The randomness comes from the operating system, never from ``--seed``: a published
seed would let anyone rebuild the transform and undo it. What undoes it, the transform itself, goes only into the
owner's key file (``keyfile.py``).

* **PaRaMS** (seed 001; official code ISCT-W/PaRaMS): the MLP neurons are permuted to be as unlike the base's as
  possible (Hungarian assignment minimising the similarity of each position's neuron with the base's neuron
  there, as the official code does), and each attention dim is scaled by alpha ~ U(0.05, 20): q and v rows by
  alpha, k rows and o_proj columns by 1/alpha. Under RoPE alpha is shared by both dims of a rotary pair and by
  every query head of a KV group; in QK-norm models the q/k part goes into the norm gains. The paper's
  dropout-based pruning is absent from its official code and from here.
* **MergeLock** (seed 003): independent random invertible QK and VO maps per KV group: per rotary pair a
  rotation by a uniform angle scaled by a log-uniform factor in [1/qk_scale, qk_scale] (the paper's dense random
  matrix would break RoPE), and per KV head a random matrix with condition number <= vo_condition.
* **MergeBarrier** (seed 004): the orthogonal part of the paper, exactly: per-pair rotations for QK (scale 1),
  Haar-random orthogonal VO maps, and for the FFN a random permutation of the intermediate neurons. The paper's
  FFN "polynomial re-parameterisation" is not public and, by its own Taylor-remainder argument, not exactly
  function-preserving; it is not implemented. Nor is the optional residual-stream rotation.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..architectures import Geometry
from ..checkpoint import Checkpoint, stamp_metadata, write_checkpoint
from ..errors import ConfigError
from . import matching, symmetry
from .base import ProtectContext, ProtectionResult, finished, mark_finished
from .keyfile import TensorDigest, read_key, write_key
from .symmetry import BlockTransform

log = logging.getLogger(__name__)


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
        return {"MLP permutation": f"{self.permutation} (vs the base)" if self.permutation == "mismatch" else "random",
                "attention scale": f"U({self.head_scale_low:g}, {self.head_scale_high:g}), RoPE pair- and KV-group-shared"}


@dataclass
class MergeLockConfig:
    """MergeLock options: how far the QK and VO maps may stretch (bf16 accuracy falls as they grow)."""

    qk_scale: float = 4.0
    vo_condition: float = 10.0

    def __post_init__(self):
        if self.qk_scale < 1 or self.vo_condition < 1:
            raise ConfigError("mergelock.qk_scale and mergelock.vo_condition must be >= 1.")

    def public_parameters(self) -> dict:
        return {"QK": f"scaled rotation per RoPE pair, scale in [1/{self.qk_scale:g}, {self.qk_scale:g}]",
                "VO": f"random invertible per KV head, condition <= {self.vo_condition:g}"}


@dataclass
class MergeBarrierConfig:
    """MergeBarrier options."""

    mlp_permutation: bool = True

    def public_parameters(self) -> dict:
        return {"QK": "rotation per RoPE pair", "VO": "random orthogonal per KV head",
                "FFN": "random neuron permutation" if self.mlp_permutation else "untouched"}


# --------------------------------------------------------------------------------------------------------
# Samplers: (geometry, generator, layer, ctx) -> BlockTransform
# --------------------------------------------------------------------------------------------------------


def _uniform(shape, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def _params_block(config: ParamsConfig, geometry: Geometry, generator: torch.Generator, permutation: torch.Tensor) -> BlockTransform:
    kv, hd, half = geometry.num_kv_heads, geometry.head_dim, geometry.rotary_dim // 2
    low, high = config.head_scale_low, config.head_scale_high

    def pair_scales():
        return symmetry.pair_constant(_uniform((half,), low, high, generator), geometry, _uniform((hd - 2 * half,), low, high, generator))

    block = BlockTransform(mlp_permutation=permutation)
    if geometry.qk_norm:
        block.qk_norm_scale = pair_scales()  # shared by every head: the norm gains are
    else:
        block.qk = torch.stack([torch.diag(pair_scales()) for _ in range(kv)])
    block.vo = torch.stack([torch.diag(_uniform((hd,), low, high, generator)) for _ in range(kv)])
    return block


def _mergelock_block(config: MergeLockConfig, geometry: Geometry, generator: torch.Generator) -> BlockTransform:
    block = BlockTransform(vo=symmetry.stack_per_kv_head(lambda: symmetry.random_conditioned(geometry.head_dim, config.vo_condition, generator), geometry))
    if geometry.qk_norm:
        block.qk = symmetry.stack_per_kv_head(lambda: symmetry.qk_norm_signs(geometry, generator), geometry)
        half = geometry.rotary_dim // 2
        block.qk_norm_scale = symmetry.pair_constant(
            symmetry.log_uniform((half,), config.qk_scale, generator), geometry,
            symmetry.log_uniform((geometry.head_dim - 2 * half,), config.qk_scale, generator),
        )
    else:
        block.qk = symmetry.stack_per_kv_head(lambda: symmetry.rope_commutant(geometry, generator, max_scale=config.qk_scale), geometry)
    return block


def _mergebarrier_block(config: MergeBarrierConfig, geometry: Geometry, generator: torch.Generator) -> BlockTransform:
    block = BlockTransform(vo=symmetry.stack_per_kv_head(lambda: symmetry.random_orthogonal(geometry.head_dim, generator), geometry))
    if geometry.qk_norm:
        block.qk = symmetry.stack_per_kv_head(lambda: symmetry.qk_norm_signs(geometry, generator), geometry)
    else:
        block.qk = symmetry.stack_per_kv_head(lambda: symmetry.rope_commutant(geometry, generator), geometry)
    if config.mlp_permutation:
        block.mlp_permutation = symmetry.random_permutation(geometry.intermediate_size, generator)
    return block


def mismatch_permutation(model: Checkpoint, base: Checkpoint, layer: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """PaRaMS's MLP permutation for one block: position i gets the fine-tuned neuron least like base neuron i.

    A neuron is its gate row, up row and down column; the assignment minimises the summed similarity, i.e.
    maximises the mismatch with the base (exact up to ``matching.EXACT_LIMIT`` neurons, see ``matching.py``).
    """
    g = model.geometry
    n = g.intermediate_size

    def neurons(checkpoint: Checkpoint) -> list[torch.Tensor]:
        return [matching.features(checkpoint.get(g.mlp(layer, "gate_proj")), n, normalise=False),
                matching.features(checkpoint.get(g.mlp(layer, "up_proj")), n, normalise=False),
                matching.features(checkpoint.get(g.mlp(layer, "down_proj")).T, n, normalise=False)]

    return matching.mismatch(neurons(base), neurons(model), generator)


def sample_transform(method: str, config, model: Checkpoint, base: Checkpoint, generator: torch.Generator, progress: bool = False) -> symmetry.LazyTransform:
    """One transform per decoder block for ``method`` (params | mergelock | mergebarrier).

    Blocks are sampled on first use, in block order, so that streaming the checkpoint through the transform
    overlaps sampling (PaRaMS's assignments) with reading and writing.
    """
    geometry = model.geometry
    if method not in FUNCTION_PRESERVING:
        raise ValueError(f"not a function-preserving method: {method!r}")

    def block(layer: int) -> BlockTransform:
        if method == "params":
            if config.permutation == "mismatch":
                permutation = mismatch_permutation(model, base, layer, generator)
            else:
                permutation = symmetry.random_permutation(geometry.intermediate_size, generator)
            return _params_block(config, geometry, generator, permutation)
        if method == "mergelock":
            return _mergelock_block(config, geometry, generator)
        return _mergebarrier_block(config, geometry, generator)

    return symmetry.LazyTransform(geometry.num_layers, block, desc=f"{method}: sampling" if progress else None)


def secret_generator() -> torch.Generator:
    """A generator seeded from the OS (the seed is used once and never stored: the key holds the transform)."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def write_protected(model: Checkpoint, base: Checkpoint, method: str, config, folder, key_path, *,
                    companions_from: Checkpoint | None = None, generator: torch.Generator | None = None, progress: bool = False) -> dict:
    """Sample ``method``'s transform and stream ``model`` through it into ``folder`` (one pass: read, transform,
    write overlap), then write the owner's key to ``key_path``. Returns the record kept beside the checkpoint."""
    transform = sample_transform(method, config, model, base, generator or secret_generator(), progress=progress)
    digest = TensorDigest()

    def protected_tensors():
        for name, tensor in symmetry.transform_tensors(model.iter_tensors(), [transform], model.geometry):
            digest.update(name, tensor)
            yield name, tensor

    write_checkpoint(folder, protected_tensors(), model.layout, companions_from=companions_from,
                     metadata=stamp_metadata(method=method), overwrite=True)
    write_key(key_path, [(method, transform)], protected_digest=digest.hexdigest())
    record = {"blocks": len(transform), "max_condition": symmetry.max_condition(transform), "protected_digest": digest.hexdigest()}
    mark_finished(folder, record)
    return record


def protected_folder(step_work_dir: Path, method: str) -> Path:
    """Where ``method``'s protected checkpoint goes in its step's work folder."""
    return step_work_dir / f"{method}-protected"


def run_function_preserving(ctx: ProtectContext, method: str, config) -> ProtectionResult:
    """Sample the transform, stream the checkpoint through it into the work folder, keep the key beside it."""
    folder = protected_folder(ctx.work_dir, method)
    key_path = ctx.step_dir(f"{method}.key.safetensors")  # beside the checkpoint folder: never linked into a release
    if finished(folder) is not None and key_path.is_file():
        log.info("%s: reusing the protected checkpoint in %s", method, folder)
    else:
        if ctx.is_main:  # one sample, on one process; the others read it from the key below
            write_protected(ctx.model, ctx.base, method, config, folder, key_path, companions_from=ctx.original, progress=ctx.progress)
        ctx.wait()
    record = finished(folder)
    transform = read_key(key_path, ctx.model.geometry).stages[0][1]
    details = {"config": asdict(config), **{k: v for k, v in record.items() if k != "protected_digest"}}
    return ProtectionResult(
        Checkpoint(folder), method, config.public_parameters(), details,
        secret={"method": method, "transform": transform, "protected_digest": record["protected_digest"]},
    )


FUNCTION_PRESERVING: dict[str, Callable] = {"params": ParamsConfig, "mergelock": MergeLockConfig, "mergebarrier": MergeBarrierConfig}

