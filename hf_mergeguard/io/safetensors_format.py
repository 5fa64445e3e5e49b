"""The safetensors format: dtypes, tensor specs, header parsing and plain reads of one tensor.

No memory map anywhere: ``safe_open`` maps whole shards, and every page a model-sized pass touches then counts as
resident memory. A tensor is read with ``preadv`` at the offset its header gives.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CorruptCheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """Name-free description of one stored tensor."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.empty((), dtype=self.dtype).element_size()


Layout = Mapping[str, TensorSpec]


def layout_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {name: TensorSpec(t.dtype, tuple(t.shape)) for name, t in tensors.items()}


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorSpec], dict[str, str], dict[str, int]]:
    """Parse and validate one safetensors header without reading tensor data.

    Returns the tensor specs in data order, the ``__metadata__`` dict and each tensor's offset in the file.
    A truncated file or a corrupt header raises :class:`CorruptCheckpointError`.
    """
    size = path.stat().st_size
    hint = "Download or convert the checkpoint again; the file is damaged."
    with open(path, "rb") as handle:
        raw_len = handle.read(8)
        if len(raw_len) < 8:
            raise CorruptCheckpointError(f"{path} is too short to be a safetensors file.", hint)
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CorruptCheckpointError(
                f"{path} has a corrupt safetensors header (declared header size {header_len} bytes, file size {size} bytes).",
                hint,
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptCheckpointError(f"{path} has a corrupt safetensors header: {exc}.", hint) from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path} has a corrupt safetensors header (not a JSON object).", hint)
    metadata = header.pop("__metadata__", None) or {}
    specs: list[tuple[int, str, TensorSpec]] = []
    data_len = size - 8 - header_len
    for name, entry in header.items():
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CorruptCheckpointError(f"{path}: corrupt or unsupported header entry for tensor {name!r}: {entry!r}.", hint) from None
        spec = TensorSpec(dtype, shape)
        if end - begin != spec.nbytes or end > data_len or begin < 0:
            raise CorruptCheckpointError(
                f"{path} is truncated or corrupt: tensor {name!r} needs bytes {begin}..{end} of the data "
                f"section, which holds {data_len} bytes.",
                hint,
            )
        specs.append((begin, name, spec))
    specs.sort(key=lambda item: item[0])
    start = 8 + header_len
    return {name: spec for _, name, spec in specs}, dict(metadata), {name: start + begin for begin, name, _ in specs}


def read_tensor(path: Path, offset: int, spec: TensorSpec) -> torch.Tensor:
    """One tensor's bytes read into a fresh tensor with plain reads (no memory map).

    safetensors' ``safe_open`` maps the whole file: every page a model-sized pass touches stays in the
    process's resident memory until the file is closed (a 10 GB shard reads as 10 GB resident). Plain reads
    keep the resident memory to the tensors actually held.
    """
    tensor = torch.empty(spec.shape, dtype=spec.dtype)
    if tensor.numel() == 0:
        return tensor
    buffer = memoryview(tensor.view(-1).view(torch.uint8).numpy())
    descriptor = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(buffer):
            read = os.preadv(descriptor, [buffer[done:]], offset + done)
            if read == 0:
                raise CorruptCheckpointError(
                    f"{path} ended while reading a tensor: the file is truncated.",
                    "Download or convert the checkpoint again; the file is damaged.",
                )
            done += read
    finally:
        os.close(descriptor)
    return tensor
