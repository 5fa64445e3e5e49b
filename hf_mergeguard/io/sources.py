"""Where tensors come from: a checkpoint on disk, or tensors in memory, behind one small interface.

Defenses, merges and attacks read tensors by name through a :class:`TensorSource`, so the same code runs
streaming from disk (a 7B checkpoint, one tensor at a time) or on a model held in memory (the toy world).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

import torch

from ..architectures import Geometry, geometry_from_config
from .checkpoint import Checkpoint
from .hf_models import model_from_state_dict
from .safetensors_format import TensorSpec, layout_of


@runtime_checkable
class TensorSource(Protocol):
    source: str
    config: dict[str, Any]

    @property
    def tensor_names(self) -> list[str]: ...

    @property
    def layout(self) -> dict[str, TensorSpec]: ...

    @property
    def geometry(self) -> Geometry: ...

    def get(self, name: str) -> torch.Tensor: ...

    def iter_tensors(self, names=None) -> Iterator[tuple[str, torch.Tensor]]: ...


class StateDictSource:
    """Tensors held in memory, with the config they belong to (same interface as :class:`Checkpoint`)."""

    def __init__(
        self, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str = "<memory>", weight_files: list | None = None
    ):
        self.tensors = dict(tensors)
        self.config = dict(config)
        self.source = source
        # The files these tensors were read from, unchanged (so score caches keyed by them still hit); None when made in memory.
        self.weight_files = weight_files

    @property
    def tensor_names(self) -> list[str]:
        return list(self.tensors)

    @property
    def layout(self) -> dict[str, TensorSpec]:
        return layout_of(self.tensors)

    @property
    def geometry(self) -> Geometry:
        return geometry_from_config(self.config)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def spec(self, name: str) -> TensorSpec:
        return self.layout[name]

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def iter_tensors(self, names=None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.tensor_names if names is None else names:
            yield name, self.tensors[name]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors)

    def load_model(self, dtype=None, device="cpu"):
        return model_from_state_dict(self.config, {k: v.clone() for k, v in self.tensors.items()}, dtype=dtype, device=device)


def materialize(source: Checkpoint | StateDictSource) -> StateDictSource:
    """Read every tensor into memory (for models small enough to be scored many times)."""
    if isinstance(source, StateDictSource):
        return source
    held = StateDictSource(source.state_dict(), source.config, source=source.source, weight_files=list(source.weight_files))
    held.fingerprint_salt = getattr(source, "fingerprint_salt", None)
    return held
