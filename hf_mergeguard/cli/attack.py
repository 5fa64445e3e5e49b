"""``hf-mergeguard attack``: run adaptive attacks on a released (protected) model and say how far they get."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..config import CheckConfig
from ..errors import ConfigError
from .app import app
from .check import checked_config, is_main_process, plan_check, run_check
from .config_flags import with_config_flags
from .options import JsonOpt, PlanGpusOpt, PlanGpuTypeOpt, PlanOpt, TokenOpt, echo_plan


@app.command("attack")
@with_config_flags(
    CheckConfig,
    exclude=("--adaptive/--no-adaptive", "--thorough", "--bf16", "--fsdp", "--data-check/--no-data-check"),  # no fine-tune to compare
    rename={"--attacks": "--kind"},
)
def attack_command(
    protected: str = typer.Argument(..., help="The protected model (folder or repo id)."),
    output_dir: Optional[Path] = typer.Option(
        None, "--output-dir", "-o", help="Write attack.json here (and, for realign, the re-aligned model in realigned/)."
    ),
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    plan: PlanOpt = False,
    plan_gpus: PlanGpusOpt = None,
    plan_gpu_type: PlanGpuTypeOpt = None,
    *,
    overrides: dict,
) -> None:
    """Merge PROTECTED with each --merge-with model as a free-rider would, then run the adaptive attack(s) (--kind)
    that try to undo the protection, and report the defender's skill the attacker gets back, next to the base floor.
    The skill gain is measured against PROTECTED itself (its standalone score).

    Exit code 0: no attack keeps more than --max-merged-retention of the gain; 1: an attack does; 2: error.

    Example: hf-mergeguard attack protected/ --base org/base --kind realign --merge-with org/other
    --freerider-tasks arc_easy --tasks gsm8k
    """
    from ..data import read_rows
    from ..report.table import format_report

    config = checked_config(protected, overrides)
    if not config.selftest.attacks:
        raise ConfigError("Missing --kind.", "Name the attack(s) to run, e.g. --kind realign (or several, comma-separated).")
    config.selftest = dataclasses.replace(config.selftest, adaptive=True)
    if plan:
        echo_plan(plan_check(config, "attack", token=token, gpus=plan_gpus, gpu_type=plan_gpu_type), as_json)
        raise typer.Exit(0)
    examples = read_rows(config.train_data, split=config.train_split) if config.train_data else None  # formatted by the task
    report = run_check(config, token=token, attack_examples=examples, keep_models=output_dir is not None, command="attack")
    if not is_main_process():
        raise typer.Exit(0 if report.gates["adaptive_retention"].passed else 1)
    if output_dir:
        _write_outputs(output_dir, report, protected, token)
    typer.echo(report.to_json().rstrip() if as_json else format_report(report))
    raise typer.Exit(0 if report.gates["adaptive_retention"].passed else 1)


def _write_outputs(output_dir: Path, report, protected: str, token) -> None:
    """``attack.json``, and the models the attacks produced (the re-aligned model in ``realigned/``), each with the
    protected model's config and tokenizer."""
    from ..attacks.base import ATTACKS
    from ..io.atomic import write_text_atomically
    from ..io.checkpoint import Checkpoint
    from ..io.writer import write_checkpoint

    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output_dir / "attack.json", report.to_json())
    for name, result in report.robustness.attacks.items():
        if result.model is not None:
            write_checkpoint(
                output_dir / ATTACKS.get(name).model_folder,
                result.model.iter_tensors(),
                result.model.layout,
                companions_from=Checkpoint.open(protected, token=token),
                overwrite=True,
            )
