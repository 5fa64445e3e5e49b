"""Several defenses in one run (``--method trap+mergelock``): each is applied once, in the order of its
``stack_rank`` whatever order ``--method`` names them in.

The merge trap trains first (it can serve as MergeGuard's stage 1); MergeGuard measures the task vector against the
base, which only means something before a function-preserving transform has moved the weights; the
function-preserving ones compose exactly in any order.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import DEFENSES, DefenseSpec


def parse_method(method: str) -> list[str]:
    """``"mergelock+trap"`` -> ``["trap", "mergelock"]``; unknown or repeated names are errors."""
    names = [m.strip().lower() for m in method.split("+") if m.strip()]
    if not names:
        raise ConfigError("--method is empty.")
    for name in names:
        DEFENSES.get(name)  # an unknown name: "did you mean"
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"--method names {', '.join(repeated)} twice.", "Name each defense once, e.g. mergeguard+mergelock.")
    return sorted(names, key=lambda name: DEFENSES.get(name).stack_rank)


def stack(method: str) -> list[DefenseSpec]:
    """The specs of ``method``'s defenses, in the order they are applied."""
    return [DEFENSES.get(name) for name in parse_method(method)]


def stack_order() -> list[str]:
    """Every registered defense in stack order (for help texts)."""
    return [spec.name for spec in sorted(DEFENSES.values(), key=lambda spec: spec.stack_rank)]
