"""Outputs written atomically: a reader (or a rerun after a crash) sees the old output or the new one, never half.

Files go through a temporary file beside them and a rename; folders through a ``.NAME.partial-PID-*`` folder renamed
into place only when complete. Partial folders of a killed earlier run (its process is gone) are removed first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import DiskFullError, OutputExistsError


def _stale_partial(path: Path) -> bool:
    match = re.search(r"\.partial-(\d+)-", path.name)
    if not match:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; whatever the block writes there replaces ``path`` when it succeeds.

    ``suffix`` keeps the extension tools look at (matplotlib picks the image format from it).
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_output_dir(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it into place only if the block succeeds.

    On any exception the temporary folder is removed and ``target`` is untouched. Temporary folders
    left by a killed earlier run (its process is gone) are removed first, so a rerun starts clean.

    Raises:
        OutputExistsError: ``target`` exists and ``overwrite`` is false.
    """
    target = Path(target).resolve()
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"Output folder {target} already exists.",
            "Choose another output folder, or pass --overwrite to replace it.",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        if _stale_partial(stale):
            shutil.rmtree(stale, ignore_errors=True)
    temp = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    temp.mkdir()
    try:
        yield temp
        if target.exists():
            trash = target.parent / f".{target.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(target, trash)
            os.rename(temp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(temp, target)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(
                f"No space left on the device while writing {target}; nothing was written.",
                f"Free some space on the disk that holds {target.parent} (or write elsewhere) and rerun.",
            ) from exc
        raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
