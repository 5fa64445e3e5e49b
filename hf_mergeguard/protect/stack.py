"""Several defenses in one run (``--method trap+mergelock``): each is applied once, in the order of its
``stack_rank`` whatever order ``--method`` names them in.

The merge trap trains first (it can serve as MergeGuard's stage 1); MergeGuard measures the task vector against the
base, which only means something before a function-preserving transform has moved the weights; the
function-preserving ones compose exactly in any order.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import DEFENSES, DefenseSpec

# Named settings of a defense, usable wherever --method names one: (the defense, its options as ``section.field``
# paths, what the card says). The preset's values replace the defense's defaults; a flag that contradicts one is an
# error (the run would no longer be the preset).
PRESETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "mergeguard-paper": (
        "mergeguard",
        {"beta": 1.0, "skip_stage1": False, "stage1.alpha": 0.01, "stage1.reading": "paper"},
        "MergeGuard as the paper writes it (beta = 1: masked entries reset to the base; stage 1 on with alpha = 0.01).",
    ),
}


def _defense_name(name: str) -> str:
    return PRESETS[name][0] if name in PRESETS else name


def apply_presets(method: str, defenses: dict[str, Any]) -> None:
    """Set the options of the presets ``method`` names on their defenses' sections (in place), refusing values the
    user set otherwise (a value other than both the default and the preset's)."""
    for name in (m.strip().lower() for m in method.split("+")):
        if name not in PRESETS:
            continue
        defense, options, _ = PRESETS[name]
        for path, value in options.items():
            *parents, leaf = path.split(".")
            section, default = defenses[defense], DEFENSES.get(defense).options()
            for parent in parents:
                section, default = getattr(section, parent), getattr(default, parent)
            current = getattr(section, leaf)
            if current != value and current != getattr(default, leaf):
                raise ConfigError(
                    f"--method {name} sets {defense}.{path} = {value!r}, but the configuration gives {current!r}.",
                    f"Drop that option to run the preset, or use --method {defense} with your own options.",
                )
            setattr(section, leaf, value)


def preset_text(method: str) -> str:
    """What the card says of the presets ``method`` names ("" for none)."""
    return " ".join(PRESETS[m.strip().lower()][2] for m in method.split("+") if m.strip().lower() in PRESETS)


def parse_method(method: str) -> list[str]:
    """``"mergelock+trap"`` -> ``["trap", "mergelock"]``; a preset counts as its defense (``mergeguard-paper`` ->
    ``mergeguard``); unknown or repeated names are errors."""
    names = [_defense_name(m.strip().lower()) for m in method.split("+") if m.strip()]
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
    """Every registered defense in stack order, then the presets (for help texts)."""
    return [spec.name for spec in sorted(DEFENSES.values(), key=lambda spec: spec.stack_rank)] + list(PRESETS)
