"""``lowrank``: the protected task vector truncated to rank r per matrix (what ``mergekit-extract-lora`` extracts), then
merged with every method of the self-test.

A free-rider who wants the skill rather than the weights keeps the task vector's leading singular directions: a
fine-tune's skill lives in a few of them, while a perturbation spread over many entries (a sign flip of scattered
entries, a trap's noise-like directions) may not. Each weight matrix of the decoder blocks becomes
theta_pre + U_r S_r V_r^T of tau_hat = theta_hat - theta_pre (a randomized SVD, seeded per tensor, exact when r is at
least the matrix's smaller side: then the model is the release itself, and its merges are the self-test's own);
every other tensor (norms, embeddings, lm_head: a LoRA extract's "modules to save") is kept as released.
The attacker's best over the ranks counts.
"""

from __future__ import annotations

import torch

from ..architectures import split_layer_name
from ..io.sources import StateDictSource
from ..report.schema import AttackResult
from ..report.scoring import attacker_best
from ..workload import Work
from .base import AttackContext, AttackSpec, matrix_attack_result, register_attack
from .merges import tensor_seed

RANKS = (16,)
THOROUGH_RANKS = (4, 16, 64)
_OVERSAMPLE = 8  # extra directions of the randomized SVD (Halko et al.): the leading r are then accurate
_POWER_ITERATIONS = 4


def truncated_task_vector(tau: torch.Tensor, rank: int, seed: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of a matrix (randomized SVD, seeded; ``tau`` itself at full rank)."""
    if rank >= min(tau.shape):
        return tau
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(tau, q=min(rank + _OVERSAMPLE, min(tau.shape)), niter=_POWER_ITERATIONS)
    return (u[:, :rank] * s[:rank]) @ v[:, :rank].T


def low_rank_model(protected, base, rank: int, seed: int = 0, device: str | None = None) -> StateDictSource:
    """The release with every decoder-block matrix's task vector truncated to ``rank``."""
    tensors = {}
    for name, tensor in protected.iter_tensors():
        layer, _ = split_layer_name(name)
        if layer is None or tensor.dim() != 2 or rank >= min(tensor.shape):  # full rank: the release's own tensor
            tensors[name] = tensor
            continue
        anchor = base.get(name)
        tau = tensor.to(device or "cpu", torch.float32) - anchor.to(device or "cpu", torch.float32)
        kept = truncated_task_vector(tau, rank, tensor_seed(seed, name))
        tensors[name] = (anchor.to(kept.device, torch.float32) + kept).to("cpu", tensor.dtype)
    return StateDictSource(tensors, protected.config, source=f"low-rank {rank}")


def run_lowrank(ctx: AttackContext) -> AttackResult:
    ranks = THOROUGH_RANKS if ctx.config.thorough else RANKS
    device = None if str(ctx.device) == "cpu" else ctx.device
    per_rank = {}
    for rank in ranks:
        model = low_rank_model(ctx.protected, ctx.base, rank, ctx.seed, device)
        per_rank[rank] = matrix_attack_result("lowrank", ctx, ctx.merge_matrix(model), {"rank": rank})
    (rank, best), _ = attacker_best(
        list(per_rank.items()),
        ctx.config.freerider_floor,
        score=lambda item: item[1].best.defender_score,
        freerider_kept=lambda item: item[1].best.freerider_kept,
    )
    ranks_tried = {str(r): {key: result.details[key] for key in ("per_method", "standalone")} for r, result in per_rank.items()}
    best.details = {"best_rank": rank, "ranks": ranks_tried}
    return best


register_attack(
    AttackSpec(
        name="lowrank",
        run=run_lowrank,
        rank=17,
        describe=lambda result: (
            f"truncated the protected task vector to rank {result.details.get('best_rank')} per matrix (an extracted "
            "LoRA, as mergekit-extract-lora makes), then merged it with every method"
        ),
        # Per rank: one pass over the weights (an SVD per matrix), then that model's merge matrix and standalone.
        work=lambda config, size: [
            Work(f"lowrank (rank {rank})", streamed_passes=1, scorings=1, raced=list(size.groups))
            for rank in (THOROUGH_RANKS if config.thorough else RANKS)
        ],
    )
)
