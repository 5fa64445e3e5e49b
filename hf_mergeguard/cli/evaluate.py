"""``hf-mergeguard evaluate``: score a model with lm-eval."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from ..config import ModelInputs
from ..selftest.config import SelfTestConfig
from ..training import RunConfig
from .app import app
from .config_flags import option_of
from .options import JsonOpt


@app.command("evaluate")
def evaluate_command(
    model: str = typer.Argument(..., help="Model folder or Hub repo id."),
    tasks: str = option_of(ModelInputs, "tasks", required=True),
    include_tasks: Optional[List[str]] = option_of(ModelInputs, "include_tasks"),
    task_data: Optional[List[str]] = option_of(ModelInputs, "task_data"),
    limit: Optional[int] = option_of(SelfTestConfig, "limit"),
    batch_size: int = option_of(SelfTestConfig, "batch_size", default=SelfTestConfig.batch_size),
    allow_code_eval: bool = option_of(SelfTestConfig, "allow_code_eval", default=False),
    code_timeout: float = option_of(SelfTestConfig, "code_timeout", default=SelfTestConfig.code_timeout),
    eval_backend: str = option_of(SelfTestConfig, "eval_backend", default=SelfTestConfig.eval_backend),
    revision: Optional[str] = option_of(ModelInputs, "revision"),
    device: Optional[str] = option_of(RunConfig, "device"),
    as_json: JsonOpt = False,
) -> None:
    """Score MODEL on lm-eval tasks (in-process; code tasks in a child process).

    Example: hf-mergeguard evaluate demo/models/count --tasks toy_count --include-tasks demo/tasks

    Offline GSM8K and HumanEval on local rows: hf-mergeguard evaluate ./my-finetune --tasks gsm8k,humaneval
    --task-data gsm8k=data/gsm8k --task-data humaneval=data/humaneval.jsonl --allow-code-eval
    """
    from ..evaluation import evaluate_model

    scores = evaluate_model(
        model,
        tasks,
        revision=revision,
        device=device,
        include_tasks=include_tasks or [],
        task_data=task_data or [],
        limit=limit,
        batch_size=batch_size,
        allow_code_eval=allow_code_eval,
        code_timeout=code_timeout,
        eval_backend=eval_backend,
    )
    if as_json:
        typer.echo(json.dumps({t: s.to_dict() for t, s in scores.items()}, indent=2))
        return
    for task, score in scores.items():
        stderr = f" +- {100 * score.stderr:.1f}" if score.stderr else ""
        typer.echo(f"{task:<24} {score.metric:<32} {score.points:6.1f}{stderr}  (n={score.samples})")
