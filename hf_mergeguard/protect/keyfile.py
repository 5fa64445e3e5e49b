"""The owner's key: the transforms that undo a function-preserving protection.

A key is a safetensors file (float64 matrices, int64 permutations) written with owner-only permissions, beside
(never inside) the release folder, and never pushed. Its header records which stages it undoes, in the order they
were applied, and a digest of the protected weights it belongs to, so ``unprotect`` refuses a key for another
checkpoint instead of writing garbage. The random seed that produced a transform is never stored anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .. import __version__
from ..architectures import Geometry
from ..errors import KeyFileError
from ..io.atomic import atomic_file
from ..symmetry.transforms import BlockTransform, ModelTransform

KEY_FORMAT = "hf-mergeguard-key"
KEY_FORMAT_VERSION = "1"
KEY_SUFFIX = ".key.safetensors"


class TensorDigest:
    """A digest of a checkpoint's tensors (names, dtypes, shapes, bytes) that ignores sharding and order."""

    def __init__(self):
        self.per_tensor: dict[str, str] = {}

    def update(self, name: str, tensor: torch.Tensor) -> None:
        h = hashlib.sha256(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
        self.per_tensor[name] = h.hexdigest()

    def hexdigest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.per_tensor):
            h.update(f"{name}:{self.per_tensor[name]}\n".encode())
        return h.hexdigest()


@dataclass
class Key:
    """A read key: the stages ``(method, transform)`` in the order they were applied, and what they protect."""

    stages: list[tuple[str, dict[int, BlockTransform]]]
    protected_digest: str
    metadata: dict

    @property
    def methods(self) -> list[str]:
        return [method for method, _ in self.stages]


def default_key_path(output_dir: str | os.PathLike) -> Path:
    """``protected/`` -> ``protected.key.safetensors`` beside it."""
    output = Path(output_dir).resolve()
    return output.parent / f"{output.name}{KEY_SUFFIX}"


def check_key_location(key_path: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """A key inside the release folder would be uploaded with it."""
    key, output = Path(key_path).resolve(), Path(output_dir).resolve()
    if key == output or output in key.parents:
        raise KeyFileError(
            f"The key file {key} would be inside the release folder {output}, which is uploaded.",
            f"Keep it beside the folder (the default is {default_key_path(output)}), or anywhere outside it.",
        )


def write_key(
    path: str | os.PathLike, stages: Sequence[tuple[str, ModelTransform]], *, protected_digest: str, extra_metadata: dict | None = None
) -> Path:
    """Write ``stages`` to ``path`` atomically (replacing it), readable by the owner only (mode 0600).

    ``protect`` refuses an existing key before any work starts (see :func:`hf_mergeguard.pipeline.protect`).
    """
    from safetensors.torch import save

    path = Path(path)
    tensors = {}
    for index, (_, transform) in enumerate(stages):
        for layer, block in transform.items():
            for part, tensor in block.parts().items():
                tensors[f"{index}.{layer}.{part}"] = tensor.contiguous()
    metadata = {
        "format": KEY_FORMAT,
        "format_version": KEY_FORMAT_VERSION,
        "tool_version": __version__,
        "methods": json.dumps([method for method, _ in stages]),
        "protected_digest": protected_digest,
        **{k: str(v) for k, v in (extra_metadata or {}).items()},
    }
    data = save(tensors, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temp:
        # Owner-only from the first byte (O_CREAT's mode); fchmod for a temporary file that already existed.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return path


def key_protected_digest(path: str | os.PathLike) -> str | None:
    """The digest of the weights a key file was written for (``None`` if it is not a readable key)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # noqa: BLE001 - not a safetensors key: the caller treats it as someone else's file
        return None
    return metadata.get("protected_digest") if metadata.get("format") == KEY_FORMAT else None


def read_key(path: str | os.PathLike, geometry: Geometry | None = None) -> Key:
    """Read and check a key (permissions, format, shapes against ``geometry`` when given)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise KeyFileError(
            f"Key file {path} does not exist.", "Pass the .key.safetensors file that protect wrote beside its output folder."
        )
    mode = path.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"Key file {path} can be read by other users (mode {stat.filemode(mode)}); whoever reads it can undo the protection.",
            f"Restrict it to yourself: chmod 600 {path}",
        )
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise KeyFileError(f"{path} is not a readable key file: {exc}.", "Pass the .key.safetensors file that protect wrote.") from None
    if metadata.get("format") != KEY_FORMAT:
        raise KeyFileError(f"{path} is not an hf-mergeguard key file.", "Pass the .key.safetensors file that protect wrote.")
    methods = json.loads(metadata["methods"])
    stages: list[tuple[str, dict[int, BlockTransform]]] = []
    for index, method in enumerate(methods):
        parts: dict[int, dict[str, torch.Tensor]] = {}
        for name, tensor in tensors.items():
            stage, layer, part = name.split(".", 2)
            if int(stage) == index:
                parts.setdefault(int(layer), {})[part] = tensor
        transform = {layer: BlockTransform.from_parts(p) for layer, p in sorted(parts.items())}
        if geometry is not None:
            for layer, block in transform.items():
                try:
                    if layer >= geometry.num_layers:
                        raise ValueError(f"block {layer} does not exist (the model has {geometry.num_layers})")
                    block.check(geometry, layer)
                except ValueError as exc:
                    raise KeyFileError(f"{path} does not fit this model: {exc}.", "Use the key written for this checkpoint.") from None
        stages.append((method, transform))
    return Key(stages=stages, protected_digest=metadata["protected_digest"], metadata=metadata)
