"""``hf-mergeguard attack``: run adaptive attacks on a released (protected) model and say how far they get."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from . import options
from .main import app


@app.command("attack")
def attack_command(
    protected: str = typer.Argument(..., help="The protected model (folder or repo id)."),
    base: str = typer.Option(..., "--base", help="The public base model it was fine-tuned from."),
    kind: str = typer.Option(..., "--kind", help="realign | unmask | graderase | recover, or several comma-separated."),
    tasks: str = options.Tasks,
    merge_with: Optional[List[str]] = options.MergeWith,
    freerider_tasks: Optional[List[str]] = options.FreeriderTasks,
    include_tasks: Optional[List[Path]] = options.IncludeTasks,
    train_data: Optional[str] = typer.Option(None, "--train-data", help="Defender-task examples the attacker has (graderase, recover): JSONL or a Hub dataset."),
    attack_examples: int = typer.Option(64, "--attack-examples", help="How many of them the attacker uses."),
    attack_steps: int = typer.Option(30, "--attack-steps", help="Steps of the fine-tuning attacks."),
    methods: str = options.Methods,
    limit: Optional[int] = options.Limit,
    batch_size: int = options.BatchSize,
    seed: int = options.Seed,
    max_merged_retention: float = options.MaxMergedRetention,
    freerider_floor: float = options.FreeriderFloor,
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Write attack.json here (and, for realign, the re-aligned model in realigned/)."),
    device: Optional[str] = options.Device,
    token: Optional[str] = options.Token,
    as_json: bool = options.AsJson,
) -> None:
    """Merge PROTECTED with each --merge-with model as a free-rider would, then run the adaptive attack(s) that
    try to undo the protection, and report the defender's skill the attacker gets back, next to the base floor.
    The skill gain is measured against PROTECTED itself (its standalone score).

    Exit code 0: no attack keeps more than --max-merged-retention of the gain; 1: an attack does; 2: error.

    Example: hf-mergeguard attack protected/ --base org/base --kind realign --merge-with org/other
    --freerider-tasks arc_easy --tasks gsm8k
    """
    from ..check import check_model
    from ..data import load_train_examples
    from ..report import format_report
    from ..selftest import SelfTestConfig

    config = SelfTestConfig(
        tasks=[t for t in tasks.split(",") if t], include_tasks=options.paths(include_tasks),
        methods=None if methods == "all" else methods.split(","), seed=seed, limit=limit, batch_size=batch_size,
        max_merged_retention=max_merged_retention, freerider_floor=freerider_floor, adaptive=True,
        attacks=[k.strip() for k in kind.split(",") if k.strip()], attack_examples=attack_examples, attack_steps=attack_steps,
    )
    examples = load_train_examples(train_data) if train_data else None
    device = options.resolve_device(device)
    report = check_model(protected, base, config, merge_with=options.list_or_empty(merge_with),
                         freerider_tasks=options.list_or_empty(freerider_tasks), token=token, device=device, attack_examples=examples)
    if output_dir:
        _write_outputs(output_dir, report, protected, base, config, token)
    typer.echo(json.dumps(report["robustness"], indent=2, default=str) if as_json else format_report(report))
    raise typer.Exit(0 if report["gates"]["adaptive_retention"]["passed"] else 1)


def _write_outputs(output_dir: Path, report: dict, protected: str, base: str, config, token) -> None:
    from ..checkpoint import Checkpoint, write_checkpoint

    output_dir.mkdir(parents=True, exist_ok=True)
    temp = output_dir / ".attack.json.tmp"
    temp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    temp.replace(output_dir / "attack.json")
    if "realign" in config.attacks:
        from ..attacks.realign import realigned_tensors

        model, base_model = Checkpoint.open(protected, token=token), Checkpoint.open(base, token=token)
        write_checkpoint(output_dir / "realigned", realigned_tensors(model, base_model), model.layout,
                         companions_from=model, overwrite=True)
