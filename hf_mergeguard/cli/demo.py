"""``hf-mergeguard demo``: the whole tool on the offline toy world."""

from __future__ import annotations

from pathlib import Path

import typer

from .main import app


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("mergeguard-demo"), "--out", help="Folder for the toy world (and the run)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the toy world."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Build the offline toy world: a tiny Llama base pretrained on synthetic skills and one fine-tune per
    skill (cached after the first build), with data and lm-eval tasks.

    Layout: OUT/models/base, OUT/models/<skill>, OUT/data/<skill>/{train,test}.jsonl, OUT/tasks/.
    """
    from ..toyworld import ToyWorldConfig, build_toy_world

    world = build_toy_world(out, ToyWorldConfig(seed=seed), overwrite=overwrite)
    typer.echo(f"Toy world in {world.root}")
    header = "model".ljust(8) + "".join(skill.rjust(8) for skill in world.config.skills)
    typer.echo(header)
    for name, scores in world.scores.items():
        typer.echo(name.ljust(8) + "".join(f"{scores[skill]:8.3f}" for skill in world.config.skills))
    typer.echo(f"lm-eval tasks: {world.tasks} (toy_" + ", toy_".join(world.config.skills) + ")")
