"""``hf-mergeguard check``: the pre-upload check (exit 0 safe, 1 merges keep the skill, 2 error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from . import options
from .main import app


@app.command("check")
def check_command(
    model: str = typer.Argument(..., help="The fine-tuned model you are about to release (folder or repo id)."),
    base: str = typer.Option(..., "--base", help="The base model it was fine-tuned from."),
    tasks: str = options.Tasks,
    merge_with: Optional[List[str]] = options.MergeWith,
    freerider_tasks: Optional[List[str]] = options.FreeriderTasks,
    include_tasks: Optional[List[Path]] = options.IncludeTasks,
    methods: str = options.Methods,
    thorough: bool = options.Thorough,
    limit: Optional[int] = options.Limit,
    batch_size: int = options.BatchSize,
    seed: int = options.Seed,
    max_merged_retention: float = options.MaxMergedRetention,
    freerider_floor: float = options.FreeriderFloor,
    allow_code_eval: bool = options.AllowCodeEval,
    code_timeout: float = options.CodeTimeout,
    output: Optional[Path] = typer.Option(None, "--output", help="Also write the report to this selftest.json path."),
    device: Optional[str] = options.Device,
    token: Optional[str] = options.Token,
    as_json: bool = options.AsJson,
) -> None:
    """Merge MODEL, unchanged, with each --merge-with model under every merge method and coefficient a
    free-rider would try (mergekit), score the merges with lm-eval, and report how much of MODEL's skill
    gain over BASE survives.

    Without --merge-with, a synthetic free-rider is made: BASE fine-tuned for a few steps on digit sorting
    (300 steps at lr 3e-4 for models under 50M parameters, 100 steps at lr 2e-5 above), with an lm-eval
    task for that skill.

    Exit code 0: every attacker's-best merge keeps at most --max-merged-retention of the gain (safe to
    release); 1: some merge keeps more; 2: error.

    Example: hf-mergeguard check demo/models/add --base demo/models/base --merge-with demo/models/sort
    --freerider-tasks toy_sort --tasks toy_add --include-tasks demo/tasks
    """
    from ..check import check_model
    from ..checkpoint import write_text_atomically
    from ..report import format_report
    from ..selftest import SelfTestConfig

    config = SelfTestConfig(
        tasks=[t for t in tasks.split(",") if t],
        include_tasks=options.paths(include_tasks),
        methods=None if methods == "all" else methods.split(","),
        thorough=thorough,
        seed=seed,
        limit=limit,
        batch_size=batch_size,
        max_merged_retention=max_merged_retention,
        freerider_floor=freerider_floor,
        allow_code_eval=allow_code_eval,
        code_timeout=code_timeout,
    )
    report = check_model(
        model,
        base,
        config,
        merge_with=options.list_or_empty(merge_with),
        freerider_tasks=options.list_or_empty(freerider_tasks),
        token=token,
        device=options.resolve_device(device),
    )
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(output, json.dumps(report, indent=2) + "\n")
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    raise typer.Exit(0 if report["passed"] else 1)
