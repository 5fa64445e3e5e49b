"""Stable identities: of a configuration (what keys work folders and score caches) and of weight files on disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def config_digest(data: Any) -> str:
    """16 hex digits of the sha256 of ``data`` as sorted JSON (non-JSON values by their ``str``)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_fingerprint(source: Any) -> str | None:
    """Identity of a checkpoint on disk (its weight files' paths, sizes and modification times); None for tensors
    held in memory."""
    files = getattr(source, "weight_files", None)
    if not files:
        return None
    stats = [(str(Path(f).resolve()), Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files]
    salt = getattr(source, "fingerprint_salt", None)  # a view of the files that is not the files (io.vocabulary)
    return config_digest(stats + [salt] if salt else stats)
