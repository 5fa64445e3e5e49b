"""``hf-mergeguard protect``: protect a fine-tune, self-test it, write the release folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import options
from .main import app


@app.command("protect")
def protect_command(
    model: Optional[str] = typer.Argument(None, help="The fine-tuned model (folder or repo id); or `model:` in --config."),
    base: Optional[str] = typer.Option(None, "--base", help="The base model it was fine-tuned from."),
    method: Optional[str] = typer.Option(None, "--method", help="mergeguard (default) | trap | params | mergelock | mergebarrier, or a stack joined by + (e.g. trap+mergeguard; applied in that order: trap, mergeguard, params, mergebarrier, mergelock)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", "-t", help="Comma-separated lm-eval tasks of the model's skill."),
    train_data: Optional[str] = typer.Option(None, "--train-data", help="Defender's data: JSONL (question/answer, prompt/completion or text) or a Hub dataset name[:config]."),
    train_split: Optional[str] = typer.Option(None, "--train-split", help="Split of a Hub --train-data (default train)."),
    merge_with: Optional[List[str]] = options.MergeWith,
    freerider_tasks: Optional[List[str]] = options.FreeriderTasks,
    include_tasks: Optional[List[Path]] = options.IncludeTasks,
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where the protected model and its report go."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A protect.yml holding any of these options (flags override it)."),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Replace --output-dir if it exists."),
    push_to: Optional[str] = typer.Option(None, "--push-to", help="Hub repo (ORG/NAME) to push weights, card, plot and selftest.json to, in one commit, only if every gate passed."),
    create_pr: Optional[bool] = typer.Option(None, "--create-pr/--no-create-pr", help="Push as a pull request (default) or commit to main directly."),
    private: Optional[bool] = typer.Option(None, "--private", help="Create the --push-to repo as private."),
    force: Optional[bool] = typer.Option(None, "--force", help="Push even if a gate failed (the card then says so in a warning)."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="params/mergelock/mergebarrier: where the owner's key goes (default: OUT.key.safetensors beside --output-dir; never inside it, never pushed)."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Folder of resumable steps (default: cache, keyed by the config)."),
    run_stage1: Optional[bool] = typer.Option(None, "--stage1/--skip-stage1", help="MergeGuard: run stage 1 (density-aware fine-tuning) before stage 2, or stage 2 alone (default: alone, the best measured; see the README)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="MergeGuard stage 1: strength of the per-layer L2 term (0.001; the paper's 0.01)."),
    stage1_reading: Optional[str] = typer.Option(None, "--stage1-reading", help="paper | paper-mean | base | base-mean."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps of stage 1 and of the trap."),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="Learning rate of stage 1 and of the trap."),
    train_batch_size: Optional[int] = typer.Option(None, "--train-batch-size", help="Stage 1 / trap examples per step (all processes)."),
    gradient_accumulation_steps: Optional[int] = typer.Option(None, "--gradient-accumulation-steps", help="Stage 1 / trap micro-batches per step."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Stage 1 / trap tokens per example."),
    bf16: Optional[bool] = typer.Option(None, "--bf16", help="Stage 1 / trap in bf16 mixed precision."),
    fsdp: Optional[bool] = typer.Option(None, "--fsdp", help="Stage 1 with FSDP (GPUs; FULL_STATE_DICT when saving); the trap refuses it."),
    trap_weight: Optional[float] = typer.Option(None, "--trap-weight", help="Trap: weight of the trap term against the task loss (lambda)."),
    trap_perturbations: Optional[str] = typer.Option(None, "--trap-perturbations", help="Trap: merge-shaped changes trained against (comma-separated): scale, dare, ties, rider."),
    trap_samples: Optional[int] = typer.Option(None, "--trap-samples", help="Trap: perturbations per micro-batch."),
    trap_ceiling: Optional[float] = typer.Option(None, "--trap-ceiling", help="Trap: cap of a perturbed loss, in units of the base model's loss on the same example."),
    trap_rider_data: Optional[str] = typer.Option(None, "--trap-rider-data", help="Trap: another task's data (JSONL or Hub dataset); the base fine-tuned on it stands in for a free-rider (default: random directions)."),
    beta: Optional[float] = typer.Option(None, "--beta", help="MergeGuard stage 2 strength: 1 resets masked entries to the base, 2 flips them."),
    criticality: Optional[str] = typer.Option(None, "--criticality", help="fast (calibration loss + first-order screen) | exact (the paper's)."),
    granularity: Optional[str] = typer.Option(None, "--granularity", help="matrix (each tensor of each block) | block."),
    exclude_share: Optional[float] = typer.Option(None, "--exclude-share", help="k': share of most critical layers left untouched (0.1)."),
    mask_share: Optional[float] = typer.Option(None, "--mask-share", help="k: share of remaining |tau| entries negated (0.1)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Merge methods of the self-test (comma-separated; default all)."),
    thorough: Optional[bool] = typer.Option(None, "--thorough", help="Finer coefficient grids in the self-test."),
    limit: Optional[int] = options.Limit,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Evaluation batch size (fixed; default 32)."),
    max_standalone_drop: Optional[float] = typer.Option(None, "--max-standalone-drop", help="Gate: points the protected model may lose (1.5)."),
    max_merged_retention: Optional[float] = typer.Option(None, "--max-merged-retention", help="Gate: share of the skill gain a merge may keep (0.25)."),
    freerider_floor: Optional[float] = typer.Option(None, "--freerider-floor", help="A merge counts only if it keeps this share of the free-rider's gain (0.5)."),
    adaptive: Optional[bool] = typer.Option(None, "--adaptive/--no-adaptive", help="Run the adaptive attacks after the merges (default on; off for speed)."),
    attacks: Optional[str] = typer.Option(None, "--attacks", help="Adaptive attacks to run (comma-separated): realign, unmask, graderase, recover (default all)."),
    attack_examples: Optional[int] = typer.Option(None, "--attack-examples", help="Defender examples the fine-tuning attacks get (64, from --train-data)."),
    attack_steps: Optional[int] = typer.Option(None, "--attack-steps", help="Steps of the fine-tuning attacks (30)."),
    allow_code_eval: Optional[bool] = typer.Option(None, "--allow-code-eval", help="Allow tasks that execute model-written code (HumanEval)."),
    code_timeout: Optional[float] = typer.Option(None, "--code-timeout", help="Seconds the child process that runs model-written code may take (3600); then it and its children are killed."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of training and random merges."),
    device: Optional[str] = options.Device,
    token: Optional[str] = options.Token,
) -> None:
    """Protect MODEL against unauthorized merging, self-test the result against mergekit merges scored with
    lm-eval, and write the protected checkpoint, selftest.json, protect_config.yml and protect.log into
    --output-dir. Exit code 0 when every gate passed, 1 when one failed (the folder is still written), 2 on
    errors. Under `accelerate launch` it uses every GPU; on a laptop it runs on CPU.

    Example: hf-mergeguard protect my-finetune --base meta-llama/Llama-3.2-1B --method mergeguard --train-data
    train.jsonl --tasks gsm8k --merge-with other/finetune --output-dir protected/
    """
    from ..config import build_protect_config
    from ..pipeline import protect
    from ..report import format_report

    # The training flags set every training stage of the run (MergeGuard's stage 1 and the trap).
    training = {
        "steps": steps,
        "learning_rate": learning_rate,
        "batch_size": train_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "max_length": max_length,
        "bf16": bf16,
        "fsdp": fsdp,
        "seed": seed,
    }
    overrides = {
        "model": model,
        "base": base,
        "method": method,
        "tasks": tasks,
        "train_data": train_data,
        "train_split": train_split,
        "merge_with": merge_with,
        "freerider_tasks": freerider_tasks,
        "include_tasks": options.paths(include_tasks) or None,
        "output_dir": str(output_dir) if output_dir else None,
        "overwrite": overwrite,
        "push_to": push_to,
        "create_pr": create_pr,
        "private": private,
        "force": force,
        "work_dir": str(work_dir) if work_dir else None,
        "key_file": str(key_file) if key_file else None,
        "device": device,
        "seed": seed,
        "mergeguard": {
            "skip_stage1": None if run_stage1 is None else not run_stage1,
            "beta": beta,
            "criticality": criticality,
            "granularity": granularity,
            "exclude_share": exclude_share,
            "mask_share": mask_share,
            "stage1": {"alpha": alpha, "reading": stage1_reading, **training},
        },
        "trap": {
            "weight": trap_weight,
            "perturbations": trap_perturbations,
            "samples": trap_samples,
            "ceiling": trap_ceiling,
            "rider_data": trap_rider_data,
            **training,
        },
        "selftest": {
            "methods": methods,
            "thorough": thorough,
            "limit": limit,
            "batch_size": batch_size,
            "max_standalone_drop": max_standalone_drop,
            "max_merged_retention": max_merged_retention,
            "freerider_floor": freerider_floor,
            "allow_code_eval": allow_code_eval,
            "code_timeout": code_timeout,
            "adaptive": adaptive,
            "attacks": attacks,
            "attack_examples": attack_examples,
            "attack_steps": attack_steps,
        },
    }
    from ..errors import GateFailedError

    config = build_protect_config(config_file, overrides)
    try:
        report = protect(config, token=token)
    except GateFailedError as failed:
        typer.echo(format_report(failed.report))
        _echo_key(failed.report)
        raise
    typer.echo(format_report(report))
    typer.echo(f"Protected model, model card (README.md), selftest.json and protect_config.yml in {config.output_dir}")
    _echo_key(report)
    release = report.get("release") or {}
    if release.get("url"):
        typer.echo(f"Pushed to {release['url']}" + (" (gates FAILED, pushed with --force)" if release.get("forced") else ""))


def _echo_key(report: dict) -> None:
    key_file = (report.get("release") or {}).get("key_file")
    if key_file:
        typer.echo(f"Owner's key (undoes the protection with `hf-mergeguard unprotect`; keep it private, it is not pushed): {key_file}")
