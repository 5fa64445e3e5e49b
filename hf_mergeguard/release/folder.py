"""The release folder and the owner's key: both or neither.

The key goes first (a release whose owner has no key cannot be undone); if the folder then fails (disk full, an
error), the new key is removed and a key it replaced (``--overwrite``) comes back, so the earlier release and its key
still match. The folder itself is assembled atomically: the protected weights with their config and tokenizer,
``selftest.json``, ``protect_config.yml``, ``protect.log`` and the model card.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..card.model_card import write_card
from ..io.atomic import atomic_output_dir
from ..io.checkpoint import Checkpoint
from ..protect.base import ProtectionResult
from ..protect.function_preserving import protected_folder
from ..protect.keyfile import check_key_location, default_key_path, key_protected_digest, write_key
from ..protect.steps import finished
from ..report.schema import SELFTEST_FILE, SelfTestReport

if TYPE_CHECKING:
    from ..config import ProtectConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "protect_config.yml"
LOG_FILE = "protect.log"


def key_path_for(config: ProtectConfig) -> Path:
    """Where the owner's key goes: --key-file, or beside the output folder (never inside it)."""
    path = Path(config.key_file).expanduser().resolve() if config.key_file else default_key_path(config.output_dir)
    check_key_location(path, config.output_dir)
    return path


def step_work_dir(work: Path, index: int, method: str) -> Path:
    """The work folder of the ``index``-th defense of the stack."""
    return work / f"{index}-{method}"


def key_of_a_killed_run(key_path: Path, target: Path, work: Path, methods: Sequence[str], keyed: Sequence[str]) -> bool:
    """Is the existing key the one this very run writes, left by a run killed before its release folder was in place?

    Then its digest is the one recorded by the work folder's last keyed step (a rerun resumes from there and writes
    the same key again); any other key is someone's earlier key and is never replaced silently. ``keyed``: the
    methods of the stack that write a key.
    """
    if target.exists():
        return False
    index = max(i for i, name in enumerate(methods) if name in keyed)
    record = finished(protected_folder(step_work_dir(work, index, methods[index]), methods[index]))
    return record is not None and key_protected_digest(key_path) == record.get("protected_digest")


def write_release(
    target: Path,
    key_path: Path | None,
    protected: Checkpoint,
    results: list[ProtectionResult],
    model: Checkpoint,
    report: SelfTestReport,
    config_yaml: str,
    log_file: Path,
    *,
    overwrite: bool,
) -> None:
    """The owner's key (when the stack has one), then the release folder: both or neither."""
    if key_path is None:
        write_output(target, protected, report, config_yaml, log_file, overwrite=overwrite)
        return
    previous = key_path.with_name(f".{key_path.name}.previous-{os.getpid()}")
    if key_path.exists():
        os.replace(key_path, previous)
    try:
        write_owner_key(key_path, results, model)
        write_output(target, protected, report, config_yaml, log_file, overwrite=overwrite)
    except BaseException:
        key_path.unlink(missing_ok=True)
        if previous.exists():
            os.replace(previous, key_path)
        raise
    previous.unlink(missing_ok=True)


def write_owner_key(key_path: Path, results: list[ProtectionResult], model: Checkpoint) -> Path:
    """The key of every function-preserving stage of the stack, in the order applied (mode 0600)."""
    stages = [(r.secret["method"], r.secret["transform"]) for r in results if r.secret]
    methods = [r.method for r in results]
    path = write_key(
        key_path,
        stages,
        protected_digest=results[-1].secret["protected_digest"],
        extra_metadata={"stack": "+".join(methods), "model": model.source},
    )
    log.info("Key (undoes %s) written to %s: keep it private, it is not part of the release.", "+".join(m for m, _ in stages), path)
    return path


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_output(target: Path, protected: Checkpoint, report: SelfTestReport, config_yaml: str, log_file: Path, *, overwrite: bool) -> Path:
    """Assemble the release folder atomically: weights + config/tokenizer, selftest.json, config, log, card."""
    with atomic_output_dir(target, overwrite=overwrite) as folder:
        for file in protected.path.iterdir():
            if file.is_file():
                _link_or_copy(file, folder / file.name)
        (folder / SELFTEST_FILE).write_text(report.to_json())
        (folder / CONFIG_FILE).write_text(config_yaml)
        if log_file.is_file():
            shutil.copy2(log_file, folder / LOG_FILE)
        write_card(folder)
    return target
