"""What ``hf-mergeguard env`` reports: versions of the stack and the accelerators this process can see."""

from __future__ import annotations

import os
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


def default_device() -> str:
    """Where models run when ``--device`` is not given: the first GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# The CPU code paths of reproducible runs (the toy world, the tests, the benchmarks). ATen's vectorised kernels and
# MKL pick their code by the CPU's instruction set (AVX2, AVX-512) and their results differ in the last bits, which
# training amplifies: the same recipe built a toy world whose base scores 66.0 on an AVX2 AMD EPYC and 71.0 on the
# machine the earlier figures came from. Pinned to AVX2 (every x86-64 CPU of the last decade has it), on the AMD
# machine the pinned build is bit-identical to its default one; other CPU models are meant to give the same bits
# (MKL's conditional numerical reproducibility, ATen's capability override) but were not available to check.
REPRODUCIBLE_CPU_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# Reductions split their work by thread: the thread count is part of the numerics.
REPRODUCIBLE_THREADS = "2"


def reproducible_cpu_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with the pinned CPU numerics and thread count, for a child process (or,
    set before ``torch`` is imported, for this one)."""
    env = dict(os.environ if base is None else base)
    env.update(REPRODUCIBLE_CPU_NUMERICS)
    env.update(OMP_NUM_THREADS=REPRODUCIBLE_THREADS, MKL_NUM_THREADS=REPRODUCIBLE_THREADS)
    return env
