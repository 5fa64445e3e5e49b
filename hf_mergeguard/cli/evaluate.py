"""``hf-mergeguard evaluate``: score a model with lm-eval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from . import options
from .main import app


@app.command("evaluate")
def evaluate_command(
    model: str = typer.Argument(..., help="Model folder or Hub repo id."),
    tasks: str = options.Tasks,
    include_tasks: Optional[List[Path]] = options.IncludeTasks,
    limit: Optional[int] = options.Limit,
    batch_size: int = options.BatchSize,
    allow_code_eval: bool = options.AllowCodeEval,
    code_timeout: float = options.CodeTimeout,
    revision: Optional[str] = options.Revision,
    device: Optional[str] = options.Device,
    as_json: bool = options.AsJson,
) -> None:
    """Score MODEL on lm-eval tasks (in-process; code tasks in a child process).

    Example: hf-mergeguard evaluate demo/models/add --tasks toy_add --include-tasks demo/tasks
    """
    from ..evaluation import evaluate_model

    scores = evaluate_model(
        model,
        tasks,
        revision=revision,
        device=options.resolve_device(device),
        include_tasks=options.paths(include_tasks),
        limit=limit,
        batch_size=batch_size,
        allow_code_eval=allow_code_eval,
        code_timeout=code_timeout,
    )
    if as_json:
        typer.echo(json.dumps({t: s.to_dict() for t, s in scores.items()}, indent=2))
        return
    for task, score in scores.items():
        stderr = f" +- {100 * score.stderr:.1f}" if score.stderr else ""
        typer.echo(f"{task:<24} {score.metric:<32} {score.points:6.1f}{stderr}  (n={score.samples})")
