"""Matching the MLP neurons of two models: PaRaMS's mismatch and the re-align attack's alignment, at any width.

A neuron is described by feature rows (its gate and up rows, for PaRaMS also its down column). Up to
``EXACT_LIMIT`` neurons the matching is a Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on
the full float64 similarity, as the official PaRaMS code and Git Re-Basin do. Above it (a 7B MLP has 11,008
neurons) the float64 similarity alone is 11,008² × 8 bytes ≈ 1 GB per block, and the assignment on it is
slow, so:

* features keep ``SKETCH_COLUMNS`` fixed random input coordinates of each row (a coordinate sample: both
  models share the input coordinates, so the sample is the same for both);
* alignment (maximise similarity) keeps each neuron's best match where no other neuron claims it (when the
  best matches form a permutation, as for near copies up to a permutation, that is the optimal assignment)
  and runs the Hungarian assignment on the rest only;
* mismatch (minimise similarity) runs the Hungarian assignment within random blocks of ``BLOCK`` neurons.

The similarity is computed in row chunks, so no ``[n, n]`` matrix is ever held.
"""

from __future__ import annotations

from typing import Sequence

import torch

EXACT_LIMIT = 4096
SKETCH_COLUMNS = 128
BLOCK = 1024
_ROW_CHUNK = 2048


def sketch_columns(width: int, neurons: int) -> torch.Tensor | None:
    """The input coordinates a feature row keeps (``None``: all of them, below ``EXACT_LIMIT`` neurons)."""
    if neurons <= EXACT_LIMIT or width <= SKETCH_COLUMNS:
        return None
    generator = torch.Generator().manual_seed(width)  # public and fixed: it hides nothing
    return torch.sort(torch.randperm(width, generator=generator)[:SKETCH_COLUMNS]).values


def features(rows: torch.Tensor, neurons: int, *, normalise: bool) -> torch.Tensor:
    """``rows`` ``[neurons, width]`` as matching features: float64 when exact, else a float32 coordinate sample."""
    columns = sketch_columns(rows.shape[1], neurons)
    out = rows.double() if columns is None else rows[:, columns].float()
    if normalise:
        out = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


def _assignment(similarity: torch.Tensor, maximize: bool) -> torch.Tensor:
    from scipy.optimize import linear_sum_assignment

    rows, columns = linear_sum_assignment(similarity.double().numpy(), maximize=maximize)
    permutation = torch.empty(similarity.shape[0], dtype=torch.long)
    permutation[torch.as_tensor(rows)] = torch.as_tensor(columns, dtype=torch.long)
    return permutation


def _similarity(left: Sequence[torch.Tensor], right: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(a @ b.T for a, b in zip(left, right))


def align(base: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> torch.Tensor:
    """Permutation p maximising the summed similarity: position i of the base gets neuron ``p[i]`` of ``other``."""
    n = base[0].shape[0]
    if n <= EXACT_LIMIT:
        return _assignment(_similarity(base, other), maximize=True)
    # Each base neuron's best match. Where the best matches form a permutation it is the optimal assignment
    # (no assignment beats every row's maximum); rows that share a best match go to the Hungarian assignment.
    base_features, other_features = torch.cat(list(base), 1), torch.cat(list(other), 1)
    best = torch.empty(n, dtype=torch.long)
    for start in range(0, n, _ROW_CHUNK):
        best[start : start + _ROW_CHUNK] = (base_features[start : start + _ROW_CHUNK] @ other_features.T).argmax(1)
    claims = torch.bincount(best, minlength=n)
    unique = claims[best] == 1
    permutation = torch.full((n,), -1, dtype=torch.long)
    permutation[unique] = best[unique]
    positions = torch.arange(n)
    rest_base = positions[~unique]
    if len(rest_base):
        taken = torch.zeros(n, dtype=torch.bool)
        taken[best[unique]] = True
        rest_other = positions[~taken]
        sub = base_features[rest_base] @ other_features[rest_other].T
        permutation[rest_base] = rest_other[_assignment(sub, maximize=True)]
    return permutation


def mismatch(base: Sequence[torch.Tensor], other: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """Permutation p minimising the summed similarity (each position gets the neuron least like the base's there)."""
    n = base[0].shape[0]
    if n <= EXACT_LIMIT:
        return _assignment(_similarity(base, other), maximize=False)
    order = torch.randperm(n, generator=generator)  # which neurons share a block: random, from the key's generator
    permutation = torch.empty(n, dtype=torch.long)
    for start in range(0, n, BLOCK):
        block = order[start : start + BLOCK]
        sub = _similarity([b[block] for b in base], [o[block] for o in other])
        permutation[block] = block[_assignment(sub, maximize=False)]
    return permutation
