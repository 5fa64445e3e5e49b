"""Options shared by several commands (one definition, the same help everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

Tasks = typer.Option(..., "--tasks", "-t", help="Comma-separated lm-eval tasks of the defender's skill, e.g. gsm8k,humaneval.")
IncludeTasks = typer.Option(None, "--include-tasks", help="Folder of extra lm-eval task YAMLs (lm-eval's include_path); repeatable.")
Limit = typer.Option(None, "--limit", help="Examples per task (default: all).")
BatchSize = typer.Option(32, "--batch-size", help="Fixed generation batch size (scores can shift with padding).")
AllowCodeEval = typer.Option(
    False, "--allow-code-eval", help="Allow tasks that execute model-written code (HumanEval): run in a child process without Hub tokens."
)
CodeTimeout = typer.Option(
    3600.0, "--code-timeout", help="Seconds the child process that runs model-written code may take; then it and its children are killed."
)
AsJson = typer.Option(False, "--json", help="Print the full figures as JSON instead of a table.")
Device = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
Token = typer.Option(None, "--token", help="Hub token (default: HF_TOKEN or your login). Never printed.", show_default=False)
Revision = typer.Option(None, "--revision", help="Branch, tag or commit of a Hub repo.")
MergeWith = typer.Option(None, "--merge-with", help="A free-rider model (folder or repo id) merged with MODEL; repeatable.")
FreeriderTasks = typer.Option(
    None, "--freerider-tasks", help="Tasks measuring a --merge-with model's own skill (one per --merge-with, in order); repeatable."
)
Methods = typer.Option("all", "--methods", help="Comma-separated merge methods, or 'all'.")
Thorough = typer.Option(False, "--thorough", help="Sweep finer coefficient grids (slower).")
Seed = typer.Option(0, "--seed", help="Seed of random merge methods and training.")
MaxStandaloneDrop = typer.Option(1.5, "--max-standalone-drop", help="Gate: most points the protected model may lose on its tasks.")
MaxMergedRetention = typer.Option(
    0.25, "--max-merged-retention", help="Gate: largest share of the skill gain over the base that the attacker's best merge may keep."
)
FreeriderFloor = typer.Option(
    0.5, "--freerider-floor", help="A merge counts as the attacker's choice only if it keeps this share of the free-rider's own gain."
)


def list_or_empty(values: Optional[List]) -> list:
    return list(values or [])


def resolve_device(device: Optional[str]) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def paths(values: Optional[List[Path]]) -> list[str]:
    return [str(v) for v in values or []]
