"""Writing checkpoints: safetensors shards streamed tensor by tensor, with an index, into an atomic folder.

Every tensor is checked finite before it is written, the header metadata is stamped (tool version, method, config
digest: never a secret), and the folder is renamed into place only when complete (see :mod:`.atomic`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

import torch

from .. import __version__
from ..errors import CheckpointError, NonFiniteWeightsError
from .atomic import atomic_output_dir
from .read_ahead import read_ahead
from .safetensors_format import DTYPE_NAMES, INDEX_FILE, SINGLE_FILE, Layout


class Companions(Protocol):
    """What gives a checkpoint folder its non-weight files (config, tokenizer, ...): a :class:`~.checkpoint.Checkpoint`."""

    def companion_files(self) -> list[Path]: ...


def parse_size(size: int | str) -> int:
    """``"5GB"`` -> 5_000_000_000; ``"500MiB"`` -> 524_288_000; ints pass through."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"Cannot read size {size!r}; use e.g. 5GB, 500MB or a number of bytes.")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    power = " KMGT".index(unit.upper() or " ")
    return int(float(number) * base**power)


def assert_finite(name: str, tensor: torch.Tensor, where: str = "") -> None:
    """Raise :class:`NonFiniteWeightsError` if ``tensor`` holds NaN or Inf."""
    # max |x| is NaN or Inf exactly when some entry is (amax propagates NaN); cheaper than isfinite().all(),
    # which builds a boolean tensor as large as the weights.
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor.abs().amax())):
        nan = int(torch.isnan(tensor).sum())
        inf = int(torch.isinf(tensor).sum())
        raise NonFiniteWeightsError(
            f"Tensor {name!r}{where} holds {nan} NaN and {inf} Inf value(s); nothing was written.",
            "If the input model has them, fix or re-export it; if a defense produced them, lower its "
            "strength (e.g. --beta, or the transform's conditioning) and rerun.",
        )


def _plan_shards(layout: Layout, max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, spec in layout.items():
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += spec.nbytes
    return shards


def _shard_file_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class _ShardWriter:
    """Writes one safetensors file: header first (all specs are known), then tensor bytes in order."""

    def __init__(self, path: Path, names: list[str], layout: Layout, metadata: Mapping[str, str]):
        header: dict[str, Any] = {"__metadata__": dict(metadata)}
        offset = 0
        for name in names:
            spec = layout[name]
            header[name] = {
                "dtype": DTYPE_NAMES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # safetensors pads the header to 8-byte alignment
        self.path = path
        self.pending = list(names)
        self.handle = open(path, "wb")
        self.handle.write(struct.pack("<Q", len(encoded)))
        self.handle.write(encoded)

    def write(self, tensor: torch.Tensor) -> None:
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self.handle.write(memoryview(data))
        self.pending.pop(0)

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


def stamp_metadata(method: str | None = None, config_digest: str | None = None, **extra: str) -> dict[str, str]:
    """The metadata written into every safetensors header we produce. Never put a secret here."""
    metadata = {"format": "pt", "hf_mergeguard_version": __version__}
    if method:
        metadata["hf_mergeguard_method"] = method
    if config_digest:
        metadata["hf_mergeguard_config_digest"] = config_digest
    metadata.update({f"hf_mergeguard_{key}": str(value) for key, value in extra.items()})
    return metadata


def write_weights(
    folder: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    layout: Layout,
    *,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: int | str = "5GB",
) -> list[str]:
    """Stream ``tensors`` into safetensors shards (+ index) inside an existing ``folder``.

    Tensors may arrive in any order (a small reorder buffer keeps block-local reorderings cheap), but every
    name of ``layout`` must arrive exactly once with its spec. Returns the shard file names.
    """
    layout = dict(layout)
    shards = _plan_shards(layout, parse_size(max_shard_size))
    files = _shard_file_names(len(shards))
    metadata = dict(metadata or stamp_metadata())
    order = [name for shard in shards for name in shard]
    shard_of = {name: index for index, shard in enumerate(shards) for name in shard}
    rank = {name: index for index, name in enumerate(order)}
    buffer: dict[str, torch.Tensor] = {}
    position = 0
    writer: _ShardWriter | None = None
    try:
        # The tensors are produced (read, transformed) in a background thread while this one writes.
        for name, tensor in read_ahead(tensors):
            spec = layout.get(name)
            if spec is None or name in buffer or rank[name] < position:
                raise CheckpointError(f"Unexpected or repeated tensor {name!r} while writing {folder}.")
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise CheckpointError(f"Tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, expected {spec.dtype} {spec.shape}.")
            assert_finite(name, tensor, " (about to be written)")
            buffer[name] = tensor
            while position < len(order) and order[position] in buffer:
                current = order[position]
                index = shard_of[current]
                if writer is None or writer.path.name != files[index]:
                    if writer is not None:
                        writer.close()
                    writer = _ShardWriter(folder / files[index], shards[index], layout, metadata)
                writer.write(buffer.pop(current))
                position += 1
        if position != len(order):
            raise CheckpointError(f"Tensors missing while writing {folder}: {', '.join(order[position : position + 5])}.")
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.handle.close()
    if len(files) > 1:
        index = {
            "metadata": {"total_size": sum(spec.nbytes for spec in layout.values()), **metadata},
            "weight_map": {name: files[shard_of[name]] for name in layout},
        }
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files


def write_checkpoint(
    target: str | os.PathLike,
    tensors: Iterable[tuple[str, torch.Tensor]],
    layout: Layout,
    *,
    companions_from: Companions | None = None,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Write a complete model folder atomically.

    Args:
        target: the output folder (must not exist unless ``overwrite``).
        tensors: ``(name, tensor)`` pairs, streamed; see :func:`write_weights`.
        layout: name -> :class:`TensorSpec` of every tensor to write.
        companions_from: copy config/tokenizer/generation-config files from this checkpoint.
        config: a config dict to write as ``config.json`` (overrides the copied one).
        metadata: header metadata, see :func:`stamp_metadata`.
        max_shard_size: largest shard, e.g. ``"5GB"``.
        overwrite: replace an existing ``target``.
        extra_files: more small files to write into the folder (name -> text or bytes).
    """
    with atomic_output_dir(target, overwrite=overwrite) as folder:
        write_weights(folder, tensors, layout, metadata=metadata, max_shard_size=max_shard_size)
        if companions_from is not None:
            for file in companions_from.companion_files():
                shutil.copy2(file, folder / file.name)
        if config is not None:
            (folder / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
        for name, content in (extra_files or {}).items():
            path = folder / name
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return Path(target).resolve()
