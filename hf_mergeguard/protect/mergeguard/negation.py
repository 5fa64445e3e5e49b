"""MergeGuard stage 2 as pure tensor math: units, the global top-k mask, and the negation.

theta_hat = theta' - beta * M (.) tau',  tau' = theta' - theta_pre, where M selects the top ``k`` share of
|tau'| entries among the tensors that are neither excluded as critical nor embeddings / final norm / lm_head.
With beta = 1 the selected entries become exactly theta_pre's (a reset to the base); beta = 2 flips them.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch

from ...architectures import EMBED, FINAL_NORM, LM_HEAD, Geometry, split_layer_name

# Stage 2 never touches the embeddings, the final norm or lm_head (the paper excludes them).
NEVER_NEGATED = (EMBED, FINAL_NORM, LM_HEAD)

# Histogram bins of the exact two-pass top-k threshold: the top 16 bits of a non-negative float32 (8 exponent
# bits, 8 mantissa bits: 256 bins per octave over the whole float range). Its bit pattern orders like its
# value, so a shift gives the bin without a logarithm, and the cut's bin holds few values for pass 2.
_BINS = 1 << 16
_MANTISSA_BITS_DROPPED = 15


def negation_units(geometry: Geometry, names: Iterable[str], granularity: str = "matrix") -> dict[str, list[str]]:
    """The "layers" of criticality: each tensor of each decoder block (``matrix``) or each block (``block``).

    Embeddings, the final norm and lm_head are never units: stage 2 does not touch them.
    """
    if granularity not in ("matrix", "block"):
        raise ValueError(f"granularity must be 'matrix' or 'block', not {granularity!r}")
    units: dict[str, list[str]] = {}
    for name in names:
        layer, _ = split_layer_name(name)
        if layer is None or name in NEVER_NEGATED:
            continue
        key = name if granularity == "matrix" else f"model.layers.{layer}"
        units.setdefault(key, []).append(name)
    return units


def excluded_count(n_units: int, share: float) -> int:
    """How many of ``n_units`` the top ``share`` is (rounded half up, at least one when share > 0)."""
    if share <= 0:
        return 0
    return min(n_units, max(1, math.floor(share * n_units + 0.5)))


def _coarse_bins(values: torch.Tensor) -> torch.Tensor:
    return values.float().contiguous().view(torch.int32) >> _MANTISSA_BITS_DROPPED


def topk_threshold(tensors: callable[[], Iterator[torch.Tensor]], share: float) -> tuple[float, int]:
    """The value t such that exactly the ``share`` largest |values| (over all tensors) are >= t.

    Exact and streaming in constant memory: pass 1 builds a histogram of |x| on the top 16 bits of its float32
    pattern (256 bins per octave), pass 2 a histogram of the low 15 bits of the values in the bin that holds the
    cut. ``tensors`` is called once per pass and yields the |tau| tensors.
    Returns ``(threshold, selected count)``; ``(inf, 0)`` when nothing is selected.
    """
    counts = torch.zeros(_BINS, dtype=torch.long)
    total = 0
    for values in tensors():
        counts += torch.bincount(_coarse_bins(values.reshape(-1)), minlength=_BINS)
        total += values.numel()
    wanted = int(math.floor(share * total))
    if wanted <= 0:
        return math.inf, 0
    from_top = torch.flip(counts, [0]).cumsum(0)
    cut_from_top = int(torch.searchsorted(from_top, torch.tensor(wanted)).item())
    cut_bin = _BINS - 1 - cut_from_top
    above = int(from_top[cut_from_top - 1]) if cut_from_top > 0 else 0
    # Pass 2: within the cut's bin the low bits tell the values apart; count them instead of keeping them
    # (bf16 weights give |tau| few distinct values, so one bin can hold hundreds of millions of equal ones).
    low_mask = (1 << _MANTISSA_BITS_DROPPED) - 1
    low_counts = torch.zeros(low_mask + 1, dtype=torch.long)
    for values in tensors():
        bits = values.float().contiguous().reshape(-1).view(torch.int32)
        low_counts += torch.bincount(bits[(bits >> _MANTISSA_BITS_DROPPED) == cut_bin] & low_mask, minlength=low_mask + 1)
    low_from_top = torch.flip(low_counts, [0]).cumsum(0)
    low = low_mask - int(torch.searchsorted(low_from_top, torch.tensor(wanted - above)).item())
    threshold = float(torch.tensor([(cut_bin << _MANTISSA_BITS_DROPPED) | low], dtype=torch.int32).view(torch.float32))
    return threshold, wanted


# Elements per chunk of the negation: its float32 temporaries stay in the CPU caches.
_CHUNK = 1 << 18


def negate(theta: torch.Tensor, base: torch.Tensor, threshold: float, beta: float) -> tuple[torch.Tensor, int]:
    """theta - beta * M (.) (theta - base), M = |theta - base| >= threshold. Returns (tensor, masked count)."""
    out = torch.empty_like(theta)
    flat_theta, flat_base, flat_out = theta.reshape(-1), base.reshape(-1), out.view(-1)
    masked = 0
    for start in range(0, flat_theta.numel(), _CHUNK):
        part = flat_theta[start : start + _CHUNK].float()
        tau = part - flat_base[start : start + _CHUNK].float()
        mask = tau.abs() >= threshold
        masked += int(mask.sum())
        flat_out[start : start + _CHUNK] = torch.where(mask, part - beta * tau, part)
    return out, masked
