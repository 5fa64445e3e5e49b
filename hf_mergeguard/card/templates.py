"""Where the model card templates are: inside the installed package, or at the top of a source checkout.

The repo keeps ``model_card_templates/`` at its top level; the wheel force-includes it as
``hf_mergeguard/model_card_templates`` (see pyproject.toml), so both layouts are searched.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
CANDIDATES = (_PACKAGE / "model_card_templates", _PACKAGE.parent / "model_card_templates")


def templates_dir() -> Path:
    for candidate in CANDIDATES:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("model_card_templates not found next to the package or in the source checkout; reinstall hf-mergeguard.")


def template_path(name: str = "modelcard.md") -> Path:
    path = templates_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"Model card template {name} is missing from {path.parent}; reinstall hf-mergeguard.")
    return path
