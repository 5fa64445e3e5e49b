"""Re-alignment: undo a function-preserving defense with nothing but the public base.

Fine-tuning moves weights little, so the base is a static anchor (Git Re-Basin; the "anchor-guided attack" of
Guo et al. 2026). Per decoder block, from the protected block and the base block only:

* MLP: Hungarian matching of neurons (``scipy.optimize.linear_sum_assignment`` on the cosine similarity of the
  concatenated gate/up rows; above 4,096 neurons unique best matches on a coordinate sample, see ``matching.py``),
  then a least-squares scale per neuron on its up row (undone on its down column);
* QK: per KV group the least-squares map A with q_protected ~ A q_base over the group's query heads (and the
  same from k, whose map is A^-T), projected onto the RoPE commutant (a scaled 2x2 rotation per rotary pair);
  QK-norm models: a sign per pair and a pair-constant scale of the norm gains;
* VO: per KV head the least-squares map B with v_protected ~ B v_base, snapped to the nearest orthogonal matrix
  (orthogonal Procrustes) when its singular values say it is a rotation.

The result is a :class:`~hf_mergeguard.symmetry.transforms.BlockTransform` per block that maps the protected model
back to the base's coordinates; it is itself an exact symmetry, so the re-aligned model computes the same
function as the protected one and merges as if it had never been protected.

As an adaptive attack (``realign``), the re-aligned model then goes through every merge method of the self-test.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..architectures import Geometry
from ..io.sources import StateDictSource
from ..report.schema import AttackResult
from ..symmetry import matching
from ..symmetry.transforms import BlockTransform, LazyTransform, pair_constant, transform_tensors
from ..workload import Work
from .base import AttackContext, AttackSpec, matrix_attack_result, register_attack

# Re-alignment that moves no tensor by more than this share of its norm found no symmetry to undo: its least
# squares alone move an unprotected toy fine-tune by up to 5.5% (they absorb part of the task vector), while
# PaRaMS, MergeLock and MergeBarrier put every protected model more than 100% away from its re-aligned self.
NO_SYMMETRY_TOLERANCE = 0.1
# Singular values within this band of 1: the map is a rotation, fit it as one (Procrustes).
_ORTHOGONAL_BAND = 0.1
# Rows per float64 chunk of the neuron-scale fit.
_ROWS = 2048


def _least_squares_map(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """M minimising ||M source - target||: ``[d, n]`` rows (or a batch of them summed)."""
    return (target @ source.T) @ torch.linalg.inv(source @ source.T)


def _project_to_rope_commutant(a: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The closest scaled rotation per rotary pair (zero across pairs); dims past rotary_dim keep their block."""
    half = geometry.rotary_dim // 2
    j = torch.arange(half)
    cos_part = (a[j, j] + a[j + half, j + half]) / 2
    sin_part = (a[j + half, j] - a[j, j + half]) / 2
    out = torch.zeros_like(a)
    out[j, j], out[j, j + half], out[j + half, j], out[j + half, j + half] = cos_part, -sin_part, sin_part, cos_part
    out[2 * half :, 2 * half :] = a[2 * half :, 2 * half :]
    return out


def _procrustes_if_orthogonal(m: torch.Tensor, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    singular = torch.linalg.svdvals(m)
    if float((singular - 1).abs().max()) > _ORTHOGONAL_BAND:
        return m
    u, _, vh = torch.linalg.svd(target @ source.T)
    return u @ vh


def _mlp_alignment(protected, base, geometry: Geometry, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = geometry.intermediate_size
    gate_p, up_p = protected.get(geometry.mlp(layer, "gate_proj")), protected.get(geometry.mlp(layer, "up_proj"))
    gate_b, up_b = base.get(geometry.mlp(layer, "gate_proj")), base.get(geometry.mlp(layer, "up_proj"))
    # Cosine similarity: a neuron's up-row scale does not hide it.
    permutation = matching.align(
        [matching.features(gate_b, n, normalise=True), matching.features(up_b, n, normalise=True)],
        [matching.features(gate_p, n, normalise=True), matching.features(up_p, n, normalise=True)],
    )
    # protected ~ scale * base, in chunks of rows; float64 where the matching is exact, float32 beyond (16-bit weights)
    dtype = torch.float64 if n <= matching.EXACT_LIMIT else torch.float32
    scale = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, _ROWS):
        rows = permutation[start : start + _ROWS]
        matched, anchor = up_p[rows].to(dtype), up_b[start : start + _ROWS].to(dtype)
        scale[start : start + len(rows)] = (matched * anchor).sum(1) / (anchor * anchor).sum(1).clamp_min(1e-12)
    return permutation, 1.0 / scale


def block_alignment(protected, base, geometry: Geometry, layer: int) -> BlockTransform:
    """The transform taking ``protected``'s block ``layer`` to ``base``'s coordinates (see the module docstring)."""
    g = geometry
    kv, group, hd = g.num_kv_heads, g.group_size, g.head_dim
    permutation, scale = _mlp_alignment(protected, base, g, layer)
    block = BlockTransform(mlp_permutation=permutation, mlp_scale=scale)

    # Stored dtype until a group is fitted: float64 one KV group at a time.
    q_p = protected.get(g.attn(layer, "q_proj")).reshape(kv, group, hd, -1)
    q_b = base.get(g.attn(layer, "q_proj")).reshape(kv, group, hd, -1)
    k_p, k_b = protected.get(g.attn(layer, "k_proj")).reshape(kv, hd, -1), base.get(g.attn(layer, "k_proj")).reshape(kv, hd, -1)
    v_p, v_b = protected.get(g.attn(layer, "v_proj")).reshape(kv, hd, -1), base.get(g.attn(layer, "v_proj")).reshape(kv, hd, -1)
    qk, vo = [], []
    for group_index in range(kv):
        q_target, q_source = torch.cat(list(q_p[group_index].double()), 1), torch.cat(list(q_b[group_index].double()), 1)
        k_target, k_source = k_p[group_index].double(), k_b[group_index].double()
        v_target, v_source = v_p[group_index].double(), v_b[group_index].double()
        if g.qk_norm:
            # Only pair-constant signs can sit in the weights: the sign of each pair's correlation with the base.
            correlation = (q_target * q_source).sum(1) + (k_target * k_source).sum(1)
            half = g.rotary_dim // 2
            pair = correlation[:half] + correlation[half : 2 * half]
            signs = pair_constant(
                torch.where(pair >= 0, 1.0, -1.0).double(), g, torch.where(correlation[2 * half :] >= 0, 1.0, -1.0).double()
            )
            qk.append(torch.diag(signs))
        else:
            from_q = _least_squares_map(q_target, q_source)
            from_k = torch.linalg.inv(_least_squares_map(k_target, k_source)).T
            a = _project_to_rope_commutant((from_q + from_k) / 2, g)
            qk.append(torch.linalg.inv(a))
        b = _least_squares_map(v_target, v_source)
        b = _procrustes_if_orthogonal(b, v_target, v_source)
        vo.append(torch.linalg.inv(b))
    block.qk, block.vo = torch.stack(qk), torch.stack(vo)
    if g.qk_norm:
        q_norm, k_norm = g.qk_norms(layer)
        offset = 1.0 if g.family.norm_offset_one else 0.0

        def pair_ratio(name: str) -> torch.Tensor:
            p, b_ = protected.get(name).double() + offset, base.get(name).double() + offset
            half = g.rotary_dim // 2
            ratio = (p[:half] * b_[:half] + p[half : 2 * half] * b_[half : 2 * half]) / (b_[:half] ** 2 + b_[half : 2 * half] ** 2)
            return pair_constant(ratio, g, p[2 * half :] / b_[2 * half :])

        # q_norm_protected = d * q_norm_base, k_norm_protected = k_norm_base / d: fit d from both.
        d = torch.sqrt((pair_ratio(q_norm) / pair_ratio(k_norm)).abs()) * torch.sign(pair_ratio(q_norm))
        block.qk_norm_scale = 1.0 / d
    return block


def realigned_tensors(protected, base, progress: bool = False, accelerator=None) -> Iterator[tuple[str, torch.Tensor]]:
    """The protected model's tensors mapped back to the base's coordinates, in one streaming pass: each block
    is aligned when its first tensor arrives (one block of each model in memory at a time).

    Under ``accelerate launch`` (``accelerator`` with several processes) the blocks' alignments are shared out instead
    (a dynamic queue: each process aligns the next block when it is free) and every process gets all of them: the
    matching, a Hungarian assignment per block, is not repeated on every rank. It draws nothing at random that
    depends on the order of the blocks, so the result is the same as one process's."""
    geometry = protected.geometry
    if accelerator is not None and accelerator.num_processes > 1:
        from ..distributed import run_jobs

        def align(layer: int) -> BlockTransform:
            return block_alignment(protected, base, geometry, layer)

        blocks = run_jobs(range(geometry.num_layers), align, accelerator=accelerator, desc="re-aligning to the base", progress=progress)
        return transform_tensors(protected.iter_tensors(), [dict(enumerate(blocks))], geometry)
    transform = LazyTransform(
        geometry.num_layers,
        lambda layer: block_alignment(protected, base, geometry, layer),
        desc="re-aligning to the base" if progress else None,
    )
    return transform_tensors(protected.iter_tensors(), [transform], geometry)


def _relative_change(after: torch.Tensor, before: torch.Tensor) -> float:
    before = before.double()
    return float((after.double() - before).norm() / before.norm().clamp_min(1e-12))


def run_realign(ctx: AttackContext) -> AttackResult:
    """Re-align the protected model to the base, then merge it with every method of the self-test."""
    tensors = dict(realigned_tensors(ctx.protected, ctx.base, ctx.progress, accelerator=ctx.accelerator))
    moved = max(_relative_change(tensors[name], before) for name, before in ctx.protected.iter_tensors())
    realigned = StateDictSource(tensors, ctx.protected.config, source="realigned")
    symmetry_found = moved >= NO_SYMMETRY_TOLERANCE
    # No symmetry to undo (e.g. MergeGuard): the re-aligned model is the protected one up to the tolerance, and its
    # merges are the self-test's own.
    report = ctx.merge_matrix(realigned) if symmetry_found else ctx.report
    # largest_move: the largest relative change of a tensor by re-aligning (its norm's share).
    result = matrix_attack_result("realign", ctx, report, {"largest_move": moved, "symmetry_found": symmetry_found})
    result.model = realigned if ctx.keep_models else None
    return result


register_attack(
    AttackSpec(
        name="realign",
        run=run_realign,
        rank=10,
        model_folder="realigned",
        describe=lambda result: (
            "re-aligned the protected model to the public base (Hungarian matching of MLP neurons, least "
            "squares per attention head), then merged it with every method"
        ),
        # One pass of matching over the weights, then the protected model's merge matrix again (and its standalone).
        work=lambda config, size: [Work("realign", streamed_passes=1, scorings=1, raced=list(size.groups))],
    )
)
