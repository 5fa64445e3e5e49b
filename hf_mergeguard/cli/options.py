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
ConfigFileOpt = Annotated[Optional[Path], typer.Option("--config", help="A YAML file holding any of these options (flags override it).")]
