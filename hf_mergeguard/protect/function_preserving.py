"""The engine of the function-preserving defenses (PaRaMS, MergeLock, MergeBarrier): move a model in weight space
without changing its function.

Each defense's options know how to sample one :class:`~hf_mergeguard.symmetry.transforms.BlockTransform` per decoder
block (``sample_block``), from the exact symmetries of :mod:`hf_mergeguard.symmetry.transforms` (RoPE commutant, GQA
groups, QK-norm, biases); this module streams the checkpoint through the sampled transform one tensor at a time.
The randomness comes from the operating system, never from ``--seed``: a published seed would let anyone rebuild
the transform and undo it. What undoes it, the transform itself, goes only into the owner's key file
(``keyfile.py``).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch

from ..io.checkpoint import Checkpoint
from ..io.writer import stamp_metadata, write_checkpoint
from ..symmetry import transforms
from ..symmetry.transforms import BlockTransform
from ..training import RunConfig
from .base import ProtectContext, ProtectionResult
from .keyfile import TensorDigest, read_key, write_key
from .steps import finished, mark_finished

log = logging.getLogger(__name__)


class TransformOptions(Protocol):
    """The options of a function-preserving defense: they sample its transform, block by block."""

    def sample_block(self, model: Checkpoint, base: Checkpoint, layer: int, generator: torch.Generator) -> BlockTransform: ...

    def public_parameters(self) -> dict: ...


def uniform(shape, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def sample_transform(
    method: str, options: TransformOptions, model: Checkpoint, base: Checkpoint, generator: torch.Generator, progress: bool = False
) -> transforms.LazyTransform:
    """One transform per decoder block of ``model`` for ``method`` (whose ``options`` sample it).

    Blocks are sampled on first use, in block order, so that streaming the checkpoint through the transform
    overlaps sampling (PaRaMS's assignments) with reading and writing.
    """
    return transforms.LazyTransform(
        model.geometry.num_layers,
        lambda layer: options.sample_block(model, base, layer, generator),
        desc=f"{method}: sampling" if progress else None,
    )


def secret_generator() -> torch.Generator:
    """A generator seeded from the OS (the seed is used once and never stored: the key holds the transform)."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def write_protected(
    model: Checkpoint,
    base: Checkpoint,
    method: str,
    options: TransformOptions,
    folder,
    key_path,
    *,
    companions_from: Checkpoint | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> dict:
    """Sample ``method``'s transform and stream ``model`` through it into ``folder`` (one pass: read, transform,
    write overlap), then write the owner's key to ``key_path``. Returns the record kept beside the checkpoint."""
    transform = sample_transform(method, options, model, base, generator or secret_generator(), progress=progress)
    digest = TensorDigest()

    def protected_tensors():
        for name, tensor in transforms.transform_tensors(model.iter_tensors(), [transform], model.geometry):
            digest.update(name, tensor)
            yield name, tensor

    write_checkpoint(
        folder, protected_tensors(), model.layout, companions_from=companions_from, metadata=stamp_metadata(method=method), overwrite=True
    )
    write_key(key_path, [(method, transform)], protected_digest=digest.hexdigest())
    record = {"blocks": len(transform), "max_condition": transforms.max_condition(transform), "protected_digest": digest.hexdigest()}
    mark_finished(folder, record)
    return record


def protected_folder(step_work_dir: Path, method: str) -> Path:
    """Where ``method``'s protected checkpoint goes in its step's work folder."""
    return step_work_dir / f"{method}-protected"


def run_function_preserving(ctx: ProtectContext, method: str, options: TransformOptions) -> ProtectionResult:
    """Sample the transform, stream the checkpoint through it into the work folder, keep the key beside it."""
    folder = protected_folder(ctx.work_dir, method)
    key_path = ctx.step_dir(f"{method}.key.safetensors")  # beside the checkpoint folder: never linked into a release
    if finished(folder) is not None and key_path.is_file():
        log.info("%s: reusing the protected checkpoint in %s", method, folder)
    else:
        if ctx.is_main:  # one sample, on one process; the others read it from the key below
            write_protected(ctx.model, ctx.base, method, options, folder, key_path, companions_from=ctx.original, progress=ctx.progress)
        ctx.wait()
    record = finished(folder)
    transform = read_key(key_path, ctx.model.geometry).stages[0][1]
    details = {"config": asdict(options), **{k: v for k, v in record.items() if k != "protected_digest"}}
    return ProtectionResult(
        Checkpoint(folder),
        method,
        options.public_parameters(),
        details,
        secret={"method": method, "transform": transform, "protected_digest": record["protected_digest"]},
    )


def runner(method: str):
    """The ``run`` of a function-preserving defense's spec."""
    return lambda ctx, options: run_function_preserving(ctx, method, options)


def no_checks(options, run: RunConfig, has_train_data: bool) -> None:
    """Function-preserving defenses need no data and run on any setup."""
