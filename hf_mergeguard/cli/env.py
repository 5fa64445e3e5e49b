"""``hf-mergeguard env``: what is installed and which GPUs are visible (paste it into bug reports)."""

from __future__ import annotations

import json

import typer

from .app import app


@app.command("env")
def env_command(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Print the versions of python, torch, transformers, accelerate, lm-eval, mergekit, huggingface_hub,
    and the GPUs this process sees."""
    from ..environment import collect_environment

    info = collect_environment()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"hf-mergeguard   {info['hf_mergeguard']}")
    typer.echo(f"python          {info['python']} ({info['platform']})")
    for package, version in info["packages"].items():
        typer.echo(f"{package:<15} {version or 'not installed'}")
    gpus = ", ".join(info["gpus"]) if info["gpus"] else "none (CPU only)"
    typer.echo(f"GPUs            {gpus}")
