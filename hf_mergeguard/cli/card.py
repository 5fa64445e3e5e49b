"""``hf-mergeguard card``: re-render the model card of a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app


@app.command("card")
def card_command(
    out_dir: Path = typer.Argument(..., help="The --output-dir of a finished protect run (holds selftest.json)."),
    model_name: Optional[str] = typer.Option(
        None, "--model-name", help="Name in the card's title (default: the run's --push-to or the folder name)."
    ),
    license: Optional[str] = typer.Option(None, "--license", help="License id for the card (default: the source model card's)."),
) -> None:
    """Re-render README.md (the model card) and selftest.png in OUT_DIR from its selftest.json."""
    from ..card import write_card

    path = write_card(out_dir, model_name=model_name, license=license)
    typer.echo(f"Model card: {path}")
