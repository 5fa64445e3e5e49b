"""Options several commands share that are not configuration fields (the huggingface_hub ``_cli_utils`` habit).

Configuration options are built from their dataclass fields (:mod:`.config_flags`): declared once, there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

TokenOpt = Annotated[
    Optional[str], typer.Option("--token", help="Hub token (default: HF_TOKEN or your login). Never printed.", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the full figures as JSON instead of a table.")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="What to print: text (a table), json (the full report) or sarif (SARIF 2.1.0, for code-scanning UIs).",
    ),
]
ConfigFileOpt = Annotated[Optional[Path], typer.Option("--config", help="A YAML file holding any of these options (flags override it).")]
PlanOpt = Annotated[
    bool,
    typer.Option(
        "--plan", help="Print what the run will do and cost (merges, scorings, tokens, steps, memory, estimated time), then exit."
    ),
]
PlanGpusOpt = Annotated[
    Optional[int],
    typer.Option("--plan-gpus", help="--plan: price the run for this many GPUs (H100s unless --plan-gpu-type).", show_default=False),
]
PlanGpuTypeOpt = Annotated[
    Optional[str], typer.Option("--plan-gpu-type", help="--plan: price the run for h100, a100, h200 or cpu.", show_default=False)
]


def echo_plan(plan, as_json: bool) -> None:
    """Print a plan (``--json``: every figure)."""
    from ..plan import format_plan

    typer.echo(plan.to_json().rstrip() if as_json else format_plan(plan))
