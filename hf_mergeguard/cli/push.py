"""``hf-mergeguard push``: push a finished protect output folder to the Hub (what the GitHub workflow's push job runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .options import TokenOpt


@app.command("push")
def push_command(
    out_dir: Path = typer.Argument(..., help="The --output-dir of a finished protect run."),
    repo_id: str = typer.Argument(..., help="Hub repo to push to (ORG/NAME)."),
    create_pr: bool = typer.Option(True, "--create-pr/--no-create-pr", help="Open a pull request (default) or commit to main."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    force: bool = typer.Option(False, "--force", help="Push even though a gate failed (the card says so)."),
    token: TokenOpt = None,
) -> None:
    """Push weights, model card, plot, selftest.json and protect_config.yml in ONE commit, only if every self-test
    gate passed (exit 1 and nothing pushed otherwise, unless --force)."""
    from ..release.push import push_output

    url = push_output(out_dir, repo_id, token=token, create_pr=create_pr, private=private, force=force)
    typer.echo(f"Pushed to {url}")
