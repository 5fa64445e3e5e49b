"""A name -> object registry with "did you mean" errors (the lm-eval ``Registry`` / peft ``register_peft_method`` habit).

A registry may own a package (``discover=``): on first lookup it imports every public module of that package, and
each module registers what it defines. Adding a defense or an attack is adding one module: nothing else lists it.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


def import_submodules(package: str) -> None:
    """Import every module and sub-package of ``package`` whose name does not start with ``_``."""
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


class Registry(Generic[T]):
    """Objects registered by name; :meth:`get` raises :class:`UnknownNameError` with suggestions.

    Args:
        kind: what the objects are, for messages ("protection method", "adaptive attack").
        error: the error raised for an unknown name.
        discover: a package whose modules register into this registry; imported on first lookup.
    """

    def __init__(self, kind: str, error: type[UnknownNameError] = UnknownNameError, *, discover: str | None = None):
        self.kind = kind
        self._error = error
        self._items: dict[str, T] = {}
        self._package = discover
        self._discovered = discover is None

    def add(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def _discover(self) -> None:
        if not self._discovered:
            self._discovered = True  # before importing: a module that looks itself up sees what is registered so far
            import_submodules(self._package)

    def get(self, name: str) -> T:
        self._discover()
        try:
            return self._items[name]
        except KeyError:
            raise self._error(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        self._discover()
        return list(self._items)

    def values(self) -> list[T]:
        self._discover()
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
