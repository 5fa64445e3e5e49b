"""``hf-mergeguard unprotect``: the owner restores the original weights of a release with its key."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .options import TokenOpt


@app.command("unprotect")
def unprotect_command(
    protected: str = typer.Argument(..., help="The protected model (folder or repo id)."),
    key: Path = typer.Option(..., "--key", help="The key file protect wrote beside its output folder (OUT.key.safetensors)."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where the restored weights go."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --output-dir if it exists."),
    token: TokenOpt = None,
) -> None:
    """Undo PaRaMS / MergeLock / MergeBarrier (and their stacks) with the owner's key: the restored weights equal
    the originals up to float rounding. MergeGuard's negation has no key and stays. Nothing is written if the key
    belongs to other weights."""
    from ..unprotect import unprotect

    result = unprotect(protected, key, output_dir, overwrite=overwrite, token=token)
    kept = f"; kept {', '.join(result['kept'])} (it has no key)" if result["kept"] else ""
    typer.echo(f"Undid {' then '.join(result['undone'])}{kept}. Restored weights in {result['output_dir']}")
