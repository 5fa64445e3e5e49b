"""``hf-mergeguard protect``: protect a fine-tune, self-test it, write the release folder (and push it)."""

from __future__ import annotations

from typing import Optional

import typer

from ..config import ProtectConfig, build_protect_config
from ..protect.base import DEFENSES
from .app import app
from .check import is_main_process
from .config_flags import with_config_flags
from .options import ConfigFileOpt, JsonOpt, PlanGpusOpt, PlanGpuTypeOpt, PlanOpt, TokenOpt, echo_plan


def defense_label(path: tuple[str, ...]) -> str | None:
    """Flags of a defense's options say which defense they set: ``trap: ...``, ``mergeguard stage1: ...``."""
    return f"{' '.join(path)}: " if path and path[0] in DEFENSES else None


@app.command("protect")
@with_config_flags(ProtectConfig, section_label=defense_label)
def protect_command(
    model: Optional[str] = typer.Argument(None, help="The fine-tuned model (folder or repo id); or `model:` in --config."),
    config_file: ConfigFileOpt = None,
    token: TokenOpt = None,
    plan: PlanOpt = False,
    plan_gpus: PlanGpusOpt = None,
    plan_gpu_type: PlanGpuTypeOpt = None,
    as_json: JsonOpt = False,
    *,
    overrides: dict,
) -> None:
    """Protect MODEL against unauthorized merging, self-test the result against mergekit merges scored with lm-eval
    (and the adaptive attacks), and write the protected checkpoint, its model card, selftest.json, protect_config.yml
    and protect.log into --output-dir. Exit code 0 when every gate passed, 1 when one failed (the folder is still
    written), 2 on errors. Under `accelerate launch` it uses every GPU; on a laptop it runs on CPU.

    Example (the default method, the merge trap, in its strong setting): hf-mergeguard protect my-finetune --base
    meta-llama/Llama-3.2-1B --train-data train.jsonl --trap-rider-data other-task.jsonl --tasks gsm8k --merge-with
    other/finetune --output-dir protected/
    """
    from ..pipeline import protect
    from ..report.table import format_report

    config = build_protect_config(config_file, {"model": model, **overrides})
    if plan:
        from ..pipeline import plan_protect

        echo_plan(plan_protect(config, token=token, gpus=plan_gpus, gpu_type=plan_gpu_type), as_json)
        raise typer.Exit(0)
    outcome = protect(config, token=token)
    if not is_main_process():  # every process ends with the same outcome: the first one reports it
        raise typer.Exit(0 if outcome.passed or config.force else 1)
    typer.echo(format_report(outcome.report))
    if outcome.passed or config.force:
        typer.echo(f"Protected model, model card (README.md), selftest.json and protect_config.yml in {outcome.output_dir}")
    if outcome.key_file:
        typer.echo(
            f"Owner's key (undoes the protection with `hf-mergeguard unprotect`; keep it private, it is not pushed): {outcome.key_file}"
        )
    if outcome.url:
        typer.echo(f"Pushed to {outcome.url}" + (" (gates FAILED, pushed with --force)" if outcome.report.release.forced else ""))
    failed = ", ".join(outcome.report.failed_gates())
    typer.echo(f"Verdict: {'passed' if outcome.passed else f'FAILED ({failed})'}. Model card: {outcome.output_dir / 'README.md'}")
    if not outcome.passed and not config.force:
        raise outcome.gate_error(config.push_to)
