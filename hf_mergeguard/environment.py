"""What ``hf-mergeguard env`` reports: versions of the stack and the accelerators this process can see."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from . import __version__

PACKAGES = (
    "torch",
    "transformers",
    "accelerate",
    "lm_eval",
    "mergekit",
    "huggingface_hub",
    "safetensors",
    "datasets",
    "evaluate",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the tool drives (None when one is missing)."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def collect_environment() -> dict:
    """Versions of python and the packages the tool drives, and the GPUs torch sees."""
    versions = package_versions()
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "hf_mergeguard": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpus,
        "cpu_threads": torch.get_num_threads(),
    }
