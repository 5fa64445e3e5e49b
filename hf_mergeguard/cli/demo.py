"""``hf-mergeguard demo``: the whole tool on the offline toy world."""

from __future__ import annotations

from pathlib import Path

import typer

from .main import app

DEMO_LIMIT = 100  # prompts per task in the demo's self-test (the README's figures use all 300)


def run_demo(out: Path, *, seed: int = 0, overwrite: bool = False, defender: str = "count", progress: bool = True, adaptive: bool = True) -> dict:
    """Build the toy world into ``out``, protect the ``defender`` fine-tune with MergeGuard's defaults, self-test
    it against the other fine-tunes with every merge method, and write the release folder to ``out/protected``.

    Returns the self-test report (whether or not the gates passed: the demo shows the verdict, it does not
    hide it).
    """
    from ..config import build_protect_config
    from ..errors import ConfigError, GateFailedError
    from ..pipeline import protect
    from ..toyworld import ToyWorldConfig, build_toy_world

    world = build_toy_world(out, ToyWorldConfig(seed=seed), overwrite=overwrite, progress=progress)
    skills = list(world.config.skills)
    if defender not in skills:
        raise ConfigError(f"Unknown toy skill {defender!r}.", f"Use one of: {', '.join(skills)}.")
    riders = [s for s in skills if s != defender]
    config = build_protect_config(None, {
        "model": str(world.model(defender)),
        "base": str(world.base),
        "tasks": [world.task_name(defender)],
        "include_tasks": [str(world.tasks)],
        "train_data": str(world.data(defender, "train")),
        "merge_with": [str(world.model(s)) for s in riders],
        "freerider_tasks": [world.task_name(s) for s in riders],
        "output_dir": str(world.root / "protected"),
        "overwrite": True,
        "seed": seed,
        "selftest": {"limit": DEMO_LIMIT, "batch_size": 128, "adaptive": adaptive},
    })
    try:
        return protect(config, progress=progress)
    except GateFailedError as failed:
        return failed.report


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("mergeguard-demo"), "--out", help="Folder for the toy world and the run."),
    seed: int = typer.Option(0, "--seed", help="Seed of the toy world."),
    defender: str = typer.Option("count", "--defender", help="Toy skill whose fine-tune is protected (sort, count, rev)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    adaptive: bool = typer.Option(True, "--adaptive/--no-adaptive", help="Run the adaptive attacks after the merges (default; --no-adaptive is faster)."),
) -> None:
    """The whole flow offline on a toy world: build it (a tiny Llama base and one fine-tune per synthetic skill,
    cached after the first build), protect one fine-tune with MergeGuard, self-test it against the others with
    every merge method (lm-eval, 100 prompts per task), write the model card, print the table.

    Layout: OUT/models/{base,<skill>}, OUT/data/<skill>/{train,test}.jsonl, OUT/tasks/, and the release folder
    OUT/protected/ (checkpoint, README.md card, selftest.png, selftest.json, protect_config.yml).
    """
    from ..report import format_report

    report = run_demo(out, seed=seed, overwrite=overwrite, defender=defender, adaptive=adaptive)
    typer.echo(format_report(report))
    typer.echo(f"Toy world in {out.resolve()}; protected model and its card: {(out / 'protected' / 'README.md').resolve()}")
