"""``hf-mergeguard demo``: the whole tool on the offline toy world."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("mergeguard-demo"), "--out", help="Folder for the toy world and the run."),
    seed: int = typer.Option(0, "--seed", help="Seed of the toy world."),
    defender: str = typer.Option("count", "--defender", help="Toy skill whose fine-tune is protected (sort, count, rev)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    adaptive: bool = typer.Option(
        True, "--adaptive/--no-adaptive", help="Run the adaptive attacks after the merges (default; --no-adaptive is faster)."
    ),
    methods: str = typer.Option(
        None, "--methods", help="Merge methods of the self-test, comma-separated (default: the nine most used; all: every one)."
    ),
    method: str = typer.Option(None, "--method", help="The protection (default: protect's default, the merge trap)."),
) -> None:
    """The whole flow offline on a toy world: build it (a tiny Llama base and one fine-tune per synthetic skill,
    cached after the first build), protect one fine-tune with the default method, self-test it against the others
    with the nine most used merge methods (lm-eval, 100 prompts per task), write the model card, print the table.

    Layout: OUT/models/{base,<skill>}, OUT/data/<skill>/{train,test}.jsonl, OUT/tasks/, and the release folder
    OUT/protected/ (checkpoint, README.md card, selftest.png, selftest.json, protect_config.yml).
    """
    from ..demo import run_demo
    from ..report.table import format_report

    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    outcome = run_demo(out, seed=seed, overwrite=overwrite, defender=defender, adaptive=adaptive, methods=chosen, method=method)
    typer.echo(format_report(outcome.report))
    typer.echo(f"Toy world in {out.resolve()}; protected model and its card: {(out / 'protected' / 'README.md').resolve()}")
