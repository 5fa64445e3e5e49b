"""Where the tool keeps what it can reuse: ``$HF_MERGEGUARD_CACHE`` (default ``~/.cache/hf_mergeguard``).

* ``runs/<digest>``    the resumable steps of a ``protect`` run, keyed by its configuration
* ``scores/<digest>``  scores of models that do not change between runs (the base, the unprotected fine-tune, ...)
* ``toyworld/<digest>`` the toy world's models and data
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$HF_MERGEGUARD_CACHE``, or ``~/.cache/hf_mergeguard``."""
    return Path(os.environ.get("HF_MERGEGUARD_CACHE", Path.home() / ".cache" / "hf_mergeguard"))


def runs_dir() -> Path:
    return cache_dir() / "runs"


def scores_dir() -> Path:
    return cache_dir() / "scores"


def toyworld_dir() -> Path:
    return cache_dir() / "toyworld"
