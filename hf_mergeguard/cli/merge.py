"""``hf-mergeguard merge``: run a mergekit YAML config (what a free-rider would run)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("merge")
def merge_command(
    config: Path = typer.Argument(..., help="A mergekit YAML config (the same file mergekit-yaml accepts)."),
    out: Path = typer.Argument(..., help="Output folder of the merged model."),
    seed: int = typer.Option(0, "--seed", help="Seed of random methods (DARE, DELLA)."),
    device: str = typer.Option("cpu", "--device", help="Where mergekit does the math."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Merge models with mergekit 0.1.5 from a YAML config into OUT (written atomically).

    Example: hf-mergeguard merge ties.yml merged/
    """
    from ..mergekit_yaml import run_mergekit_config

    folder = run_mergekit_config(config, out, overwrite=overwrite, seed=seed, device=device)
    typer.echo(f"Merged model written to {folder}")
