"""The work folder of a ``protect`` run: where it is (keyed by a digest of what changes the result, or ``--work-dir``)
and which options its finished steps were made with (``run.json``: a run with other options is refused there)."""

from __future__ import annotations

import json
from pathlib import Path

from . import __version__
from .config import RELEASE_ONLY_OPTIONS, ProtectConfig
from .digests import config_digest
from .errors import ConfigError
from .evaluation.local_data import parse_task_data, task_data_identity
from .io.atomic import write_text_atomically
from .paths import runs_dir
from .protect.base import DEFENSES
from .protect.stack import parse_method


def _keyed_options(config: ProtectConfig) -> dict:
    """What changes the result: not where the output goes, the device, nor the options of defenses the run does not
    apply."""
    applied = set(parse_method(config.method))
    keyed = {
        key: value
        for key, value in config.to_dict().items()
        if key not in RELEASE_ONLY_OPTIONS and not (key in DEFENSES and key not in applied)
    }
    keyed["run"] = {key: value for key, value in keyed["run"].items() if key != "device"}
    # The rows' files, not the paths as typed (edited rows change the result); absent when unused, so the work folders
    # of runs made before --task-data existed are still found.
    if keyed.get("task_data"):
        keyed["task_data"] = task_data_identity(parse_task_data(keyed["task_data"]))
    else:
        keyed.pop("task_data", None)
    return {"tool": __version__, **keyed}


def work_dir_for(config: ProtectConfig) -> Path:
    """The run's work folder: ``--work-dir``, or one keyed by a digest of what changes the result."""
    if config.work_dir:
        return Path(config.work_dir)
    return runs_dir() / config_digest(_keyed_options(config))


RUN_RECORD = "run.json"  # in the work folder: the options its finished steps were made with


def claim_work_dir(config: ProtectConfig, work: Path, *, write: bool = True) -> None:
    """Record the options of the run in its work folder (``write``: the first process), or refuse a ``--work-dir``
    whose finished steps were made with other options (they would be reused as they are)."""
    options = json.loads(json.dumps(_keyed_options(config), default=str))
    record = work / RUN_RECORD
    if record.is_file():
        earlier = json.loads(record.read_text()).get("options", {})
        changed = sorted(_differences(earlier, options))
        if changed:
            raise ConfigError(
                f"The work folder {work} holds the steps of a run with other options ({', '.join(changed[:6])}"
                f"{' ...' if len(changed) > 6 else ''}): its finished steps would be reused as they are.",
                "Pass another --work-dir (or leave it out: the default folder is keyed by the options), or rerun with "
                "that run's options to resume it.",
            )
        return
    if write:
        work.mkdir(parents=True, exist_ok=True)
        write_text_atomically(record, json.dumps({"options": options}, indent=2))


def _differences(a, b, prefix: str = "") -> set[str]:
    """The dotted option names whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(_differences(a.get(k), b.get(k), f"{prefix}{k}.") for k in set(a) | set(b)))
    return set() if a == b else {prefix.rstrip(".")}
