"""``hf-mergeguard check``: the pre-upload check (exit 0 safe, 1 merges keep the skill, 2 error)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import typer

from ..config import CheckConfig, build_config
from ..errors import ConfigError
from .app import app
from .config_flags import with_config_flags
from .options import FormatOpt, JsonOpt, PlanGpusOpt, PlanGpuTypeOpt, PlanOpt, TokenOpt, echo_plan


def checked_config(model: str, overrides: dict) -> CheckConfig:
    """The configuration of ``check`` and ``attack``, with ``--base`` and ``--tasks`` required."""
    config = build_config(CheckConfig, None, {"model": model, **overrides})
    if not config.base:
        raise ConfigError("Missing --base.", "Pass the base model MODEL was fine-tuned from.")
    config.check_inputs()
    return config


def run_check(config: CheckConfig, *, token: str | None, attack_examples=None, keep_models: bool = False, command: str = "check"):
    """``check_model`` on a checked configuration, with the run's accelerator: under ``accelerate launch`` the merges
    and attack scorings are split over the processes (each scores its share; all end with the whole report)."""
    from ..budget import fit_to_budget
    from ..selftest.check import check_model
    from ..training import make_accelerator

    # --budget-hours: cut to fit, recorded (``attack`` keeps the attacks it was asked for).
    fit_to_budget(config, lambda c: _plan_check(c, command, token, None, None), drop_attacks=command != "attack")
    accelerator = make_accelerator(config.run)
    return check_model(
        config.model,
        config.base,
        config.selftest,
        tasks=config.tasks,
        include_tasks=config.include_tasks,
        task_data=config.task_data,
        merge_with=config.merge_with,
        freerider_tasks=config.freerider_tasks,
        seed=config.run.seed,
        token=token,
        device=config.run.device or str(accelerator.device),
        attack_examples=attack_examples,
        keep_models=keep_models,
        accelerator=accelerator,
        train_format=config.train_format,
        train_fewshot=config.train_fewshot,
    )


def plan_check(config: CheckConfig, command: str, *, token=None, gpus=None, gpu_type=None):
    """``--plan`` of ``check`` and ``attack``: the model as it is, against its free-riders (or a synthetic one). With
    ``--budget-hours``, the plan of the run cut to fit (``config`` is left as it is)."""
    from ..budget import fit_to_budget

    if config.selftest.budget_hours is not None:
        planner = lambda c: _plan_check(c, command, token, gpus, gpu_type)  # noqa: E731
        return fit_to_budget(copy.deepcopy(config), planner, drop_attacks=command != "attack")
    return _plan_check(config, command, token, gpus, gpu_type)


def _plan_check(config: CheckConfig, command: str, token, gpus, gpu_type):
    from ..plan import build_plan

    riders = len(config.merge_with or [])
    return build_plan(
        command,
        config=config,
        freeriders=riders or 1,
        with_original=False,
        synthetic_freerider=not riders,
        token=token,
        gpus=gpus,
        gpu_type=gpu_type,
    )


def is_main_process() -> bool:
    """Only the first process of an ``accelerate launch`` prints and writes (every process ends with the same report)."""
    from accelerate import PartialState

    return PartialState().is_main_process


@app.command("check")
@with_config_flags(
    CheckConfig,
    exclude=(
        "--train-data",
        "--train-split",
        "--train-format",
        "--train-fewshot",
        "--data-check/--no-data-check",
        "--adaptive/--no-adaptive",
        "--attacks",
        "--attack-examples",
        "--attack-steps",
        "--bf16",
        "--fsdp",
    ),
)
def check_command(
    model: str = typer.Argument(..., help="The fine-tuned model you are about to release (folder or repo id)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Also write the report to this selftest.json path."),
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    output_format: FormatOpt = "text",
    plan: PlanOpt = False,
    plan_gpus: PlanGpusOpt = None,
    plan_gpu_type: PlanGpuTypeOpt = None,
    *,
    overrides: dict,
) -> None:
    """Merge MODEL, unchanged, with each --merge-with model under every merge method and coefficient a
    free-rider would try (mergekit), score the merges with lm-eval, and report how much of MODEL's skill
    gain over BASE survives.

    Without --merge-with, a synthetic free-rider is made: BASE fine-tuned for a few steps on digit sorting
    (300 steps at lr 3e-4 for models under 50M parameters, 100 steps at lr 2e-5 above), with an lm-eval
    task for that skill.

    Exit code 0: every attacker's-best merge keeps at most --max-merged-retention of the gain (safe to
    release); 1: some merge keeps more (a finding); 2: error. --format sarif prints the findings as SARIF 2.1.0
    for code-scanning UIs (--json is --format json).

    Example: hf-mergeguard check demo/models/count --base demo/models/base --merge-with demo/models/sort
    --freerider-tasks toy_sort --tasks toy_count --include-tasks demo/tasks
    """
    from ..io.atomic import write_text_atomically

    output_format = "json" if as_json else output_format
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"Unknown --format {output_format!r}.", f"Use one of: {', '.join(OUTPUT_FORMATS)}.")
    config = checked_config(model, overrides)
    if plan:
        echo_plan(plan_check(config, "check", token=token, gpus=plan_gpus, gpu_type=plan_gpu_type), output_format == "json")
        raise typer.Exit(0)
    report = run_check(config, token=token)
    if not is_main_process():
        raise typer.Exit(0 if report.passed else 1)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(output, report.to_json())
    typer.echo(format_check(report, output_format, model=model))
    raise typer.Exit(0 if report.passed else 1)


OUTPUT_FORMATS = ("text", "json", "sarif")


def format_check(report, output_format: str, *, model: str) -> str:
    """The report as ``check --format`` prints it: a table, the report's JSON, or a SARIF log."""
    import json

    from ..report.sarif import report_to_sarif
    from ..report.table import format_report

    if output_format == "sarif":
        return json.dumps(report_to_sarif(report, model=model), indent=2)
    return report.to_json().rstrip() if output_format == "json" else format_report(report)
