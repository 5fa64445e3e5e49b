"""Weights formed one tensor at a time inside the forward pass (the merge trap's perturbations, a LoRA on frozen
weights for the trap and the fine-tuning attacks): the memory path that fits an LLM.

Every weight W of the model is re-parametrised (``torch.nn.utils.parametrize``) as

    W = θ_pre + c · f(Δ),   Δ = W_ft − θ_pre  (+ B·A·α/r when the change is trained as LoRA)

where f is the pass's perturbation: the identity for the clean pass (W itself), "nothing" for the base pass (θ_pre),
a merge-shaped change (scale, DARE drop, TIES trim, an added free-rider vector) for a trap pass. A perturbed tensor
exists only while its layer runs; with gradient checkpointing it is formed again in the backward pass from the same
draw (restored by :meth:`PerturbationState.checkpoint_context`), so there is never a whole perturbed copy of the model.
Memory is the weights, θ_pre in the weights' dtype, the trained parameters with their gradients and optimizer state,
and one layer's temporaries. Random draws (DARE masks, free-rider directions) are made on the weights' device from a
generator seeded by (draw, tensor): a recomputation draws the same numbers, and so does every process.

With LoRA (Trap²'s own LLM setting, rank 16) the fine-tune's weights stay frozen in their stored dtype (bf16 for an
LLM) and only A and B train, in float32; the released weight is W_ft + B·A·α/r rounded once to the stored dtype, which
is also what the clean pass computes (the model is trained as it will be released).
"""

from __future__ import annotations

import contextlib
import math
from typing import Mapping

import torch
from torch.nn.utils import parametrize

BASE = "base"  # the draw of the base pass: θ_pre
LORA_SEED = 20260121  # seeds the LoRA factors' initial draw (with the tensor's index)


class PerturbationState:
    """The draw of the pass being run (None: the clean pass; :data:`BASE`; or a draw of ``PerturbationSampler``)."""

    def __init__(self):
        self.draw = None

    @contextlib.contextmanager
    def use(self, draw):
        previous, self.draw = self.draw, draw
        try:
            yield
        finally:
            self.draw = previous

    def checkpoint_context(self):
        """``context_fn`` for ``torch.utils.checkpoint``: the recomputation in the backward pass uses the draw that
        was current when the layer ran forward (the backward of every pass happens after the last pass)."""
        return contextlib.nullcontext(), self.use(self.draw)


def _generator(device: torch.device, seed: int, index: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + index) % (2**63 - 1))


def _uniform_per_tensor(device, seed: int, index: int, low: float, high: float) -> float:
    """One number of U[low, high] for tensor ``index`` of a draw (the same on every process and in a recomputation)."""
    return low + (high - low) * float(torch.rand((), generator=_generator(device, seed, index), device=device))


def _random_direction(delta: torch.Tensor, draw: dict, index: int) -> torch.Tensor:
    """A random direction for a tensor, of rank ``rider_rank`` when that is set (task vectors are close to low rank),
    scaled to ``rider_norm`` × |Δ| of the tensor."""
    generator = _generator(delta.device, draw["seed"], index)
    rank = draw.get("rider_rank")
    if rank and delta.dim() == 2:
        rank = min(rank, *delta.shape)
        left = torch.randn(delta.shape[0], rank, generator=generator, device=delta.device)
        direction = left @ torch.randn(rank, delta.shape[1], generator=generator, device=delta.device)
    else:
        direction = torch.randn(delta.shape, generator=generator, device=delta.device)
    norm = delta.detach().norm() * draw.get("rider_norm", 1.0)
    return direction.to(delta.dtype) * (norm / direction.norm().clamp_min(1e-12))


def _rider_part(delta: torch.Tensor, draw: dict, index: int, rider: torch.Tensor | None) -> torch.Tensor:
    """The free-rider's part of a tensor: one of the stand-in vectors (``rider`` stacks them), else a random direction."""
    if rider is None:
        return _random_direction(delta, draw, index)
    part = rider[draw.get("rider_index", 0) % rider.shape[0]] if rider.dim() == delta.dim() + 1 else rider
    return part.to(delta.dtype)


def _della_keep(delta: torch.Tensor, draw: dict, index: int) -> torch.Tensor:
    """DELLA's magnitude-ranked drops (MAGPRUNE): drop probability ``drop`` ± ``epsilon``, lowest for the largest
    entries, and the kept ones rescaled by 1 / (1 − their probability).

    Entries are ranked within their row, as mergekit's ``della_magprune`` does (a 1-D tensor is one row). The rows are
    sorted a chunk at a time and the rest is done in place, so that the work beside an LLM's largest tensor (the
    embedding) stays near three copies of it instead of the seven that one global sort took."""
    rows = delta.detach().abs().reshape(delta.shape[0] if delta.dim() > 1 else 1, -1)
    width = rows.shape[1]
    drop = torch.empty_like(rows)
    chunk = max(1, 2**24 // width)  # 16 M entries per sort: its int64 index buffers stay at 128 MB each
    for start in range(0, rows.shape[0], chunk):
        drop[start : start + chunk] = rows[start : start + chunk].argsort(dim=1).argsort(dim=1)
    del rows
    # rank / (width - 1) in [0, 1] -> drop + epsilon * (1 - 2 * rank), clamped; then the keep multiplier, in place.
    drop.mul_(-2 * draw["epsilon"] / max(width - 1, 1)).add_(draw["drop"] + draw["epsilon"]).clamp_(0, 0.99)
    drop = drop.view_as(delta)
    keep = torch.rand(delta.shape, generator=_generator(delta.device, draw["seed"], index), device=delta.device) >= drop
    return drop.neg_().add_(1).reciprocal_().mul_(keep)


def _low_rank(delta: torch.Tensor, draw: dict, index: int) -> torch.Tensor:
    """The task vector truncated to a share ``rank_share`` of its rank (an SVD projection, differentiable in Δ; the
    subspace itself is not trained through). 1-D tensors are kept whole, as merge tools do."""
    if delta.dim() != 2:
        return delta
    rank = max(1, round(draw["rank_share"] * min(delta.shape)))
    with torch.no_grad():
        if min(delta.shape) <= 512:  # exact, as mergekit-extract-lora
            left = torch.linalg.svd(delta.detach().float(), full_matrices=False)[0][:, :rank]
        else:  # a randomised SVD (close for the fast-decaying spectra of task vectors): an LLM's tensors in a pass
            torch.manual_seed((draw["seed"] * 1_000_003 + index) % (2**63 - 1))
            left = torch.svd_lowrank(delta.detach().float(), q=min(rank + 8, min(delta.shape)), niter=4)[0][:, :rank]
    left = left.to(delta.dtype)
    return left @ (left.T @ delta)


def perturb_delta(delta: torch.Tensor, draw: dict, index: int, rider: torch.Tensor | None = None) -> torch.Tensor:
    """The draw's change of one tensor's task vector ``delta`` (differentiable in it); ``index`` tells tensors apart in
    the random draws, ``rider`` is that tensor's part of the stand-in free-rider vectors (stacked when several).

    The draw's ``coefficient`` multiplies the result; a ``layerwise`` draw sets it to 1 and scales each tensor here.
    A draw with ``inner`` (the fine-tuning term) adds that tensor's inner-step shift after the coefficient
    (:meth:`TrainedChange.forward`)."""
    kind = draw["kind"]
    if kind == "dare":
        keep = torch.rand(delta.shape, generator=_generator(delta.device, draw["seed"], index), device=delta.device) >= draw["drop"]
        return delta * keep / (1 - draw["drop"])
    if kind == "della":
        return delta * _della_keep(delta, draw, index)
    if kind == "ties":
        magnitude = delta.detach().abs()
        flat = magnitude.flatten()
        k = max(1, int(round(draw["density"] * flat.numel())))
        cut = flat.kthvalue(flat.numel() - k + 1).values if k < flat.numel() else flat.min()
        return delta * (magnitude >= cut)
    if kind == "lowrank":
        return _low_rank(delta, draw, index)
    if kind in ("rider", "finetune"):  # finetune: a rider merge, then the inner steps (the draw's "inner")
        return delta + draw.get("rider_scale", 1.0) * _rider_part(delta, draw, index, rider)
    if kind == "layerwise":
        # Per-tensor coefficients for the defender's vector and the free-rider's (the layerwise attack's freedom).
        own = _uniform_per_tensor(delta.device, draw["seed"], 2 * index, *draw["range"])
        other = _uniform_per_tensor(delta.device, draw["seed"], 2 * index + 1, *draw["rider_range"])
        return own * delta + other * _rider_part(delta, draw, index, rider)
    return delta  # scale: the coefficient does it


class InnerShift:
    """An attacker's inner fine-tuning of one tensor during a trap pass (the ``finetune`` perturbation): a shift added
    to the perturbed weight, on every entry (``full``) or as a LoRA ``B·A`` (``lora``; 1-D tensors are not adapted).
    Each :meth:`step` moves it by −lr·sign(gradient), Adam's first step."""

    def __init__(self, anchor: torch.Tensor, index: int, mode: str, seed: int, rank: int):
        self.factors = None
        if mode == "lora":
            rows, columns = anchor.shape
            lora_a = torch.empty(rank, columns, device=anchor.device)
            torch.nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5), generator=_generator(anchor.device, seed, index))
            self.factors = [lora_a.requires_grad_(), torch.zeros(rows, rank, device=anchor.device, requires_grad=True)]
            self.scaling = 2.0  # peft's default alpha = 2 x rank
        else:
            self.value = torch.zeros(anchor.shape, device=anchor.device, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return self.factors if self.factors is not None else [self.value]

    def shift(self) -> torch.Tensor:
        if self.factors is not None:
            lora_a, lora_b = self.factors
            return (lora_b @ lora_a) * self.scaling
        return self.value

    @torch.no_grad()
    def step(self, gradients: list[torch.Tensor | None], lr: float) -> None:
        for tensor, gradient in zip(self.parameters(), gradients):
            if gradient is not None:
                tensor -= lr * gradient.sign()

    def freeze(self) -> None:
        for tensor in self.parameters():
            tensor.requires_grad_(False)


class TrainedChange(torch.nn.Module):
    """The parametrisation of one weight (see the module docstring)."""

    def __init__(
        self,
        anchor: torch.Tensor,
        index: int,
        state: PerturbationState,
        *,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        rider: torch.Tensor | None = None,
    ):
        super().__init__()
        self.register_buffer("anchor", anchor, persistent=False)
        self.register_buffer("rider", rider, persistent=False)
        self.index, self.state = index, state
        self.lora_A = self.lora_B = None
        if lora_rank:
            rows, columns = anchor.shape
            self.lora_A = torch.nn.Parameter(torch.empty(lora_rank, columns, dtype=torch.float32, device=anchor.device))
            # peft's LoRA init (B = 0, so the start is W_ft), drawn from the tensor's own seed: every process draws the
            # same factors without a broadcast (FSDP shards them as they are).
            torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=_generator(anchor.device, LORA_SEED, index))
            self.lora_B = torch.nn.Parameter(torch.zeros(rows, lora_rank, dtype=torch.float32, device=anchor.device))
            self.scaling = (lora_alpha if lora_alpha is not None else 2 * lora_rank) / lora_rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        draw = self.state.draw
        if draw == BASE:
            return self.anchor.to(weight.dtype)
        if draw is None:  # the clean pass: the weights as they will be released
            if self.lora_A is None:
                return weight
            return (weight.float() + (self.lora_B @ self.lora_A) * self.scaling).to(weight.dtype)
        delta = weight.float() - self.anchor.float()
        if self.lora_A is not None:
            delta = delta + (self.lora_B @ self.lora_A) * self.scaling
        changed = self.anchor.float() + draw["coefficient"] * perturb_delta(delta, draw, self.index, self.rider)
        inner = draw.get("inner")
        if inner is not None and self.index in inner:
            changed = changed + inner[self.index].shift()
        return changed.to(weight.dtype)


def _lora_targets(model: torch.nn.Module) -> set[str]:
    """The 2-D weights of the decoder's linear layers (attention and MLP projections; not the LM head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and module.weight.dim() == 2
    }


class TrainedModel:
    """``model`` re-parametrised for trap training; :meth:`release` bakes the clean weights back in and removes it.

    Args:
        model: the defender's fine-tune, on its training device.
        base: θ_pre by parameter name (moved to the weights' device, kept in its dtype).
        lora_rank: 0 trains every weight (float32 master weights: load the model in float32); r > 0 trains a LoRA of
            rank r on each decoder linear weight and freezes the rest.
        rider: a stand-in free-rider task vector by name (the trap's ``rider_data``), or None.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        base: Mapping[str, torch.Tensor],
        *,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        rider: Mapping[str, torch.Tensor] | None = None,
    ):
        self.model, self.state = model, PerturbationState()
        targets = _lora_targets(model) if lora_rank else set()
        modules = dict(model.named_modules())
        self.changes: dict[str, TrainedChange] = {}
        for index, (name, param) in enumerate(list(model.named_parameters())):
            if lora_rank:
                param.requires_grad_(False)
            elif not param.requires_grad:
                continue
            owner, _, attribute = name.rpartition(".")
            anchor = base[name].to(param.device)  # in its own dtype (bf16 for an LLM base): the passes cast it
            rider_part = rider[name].to(param.device) if rider is not None and name in rider else None  # its own dtype
            change = TrainedChange(
                anchor,
                index,
                self.state,
                lora_rank=lora_rank if name in targets else 0,
                lora_alpha=lora_alpha,
                rider=rider_part,
            )
            parametrize.register_parametrization(modules[owner], attribute, change, unsafe=True)
            self.changes[name] = change
        self._tied = self._retie(modules)

    @classmethod
    def lora(cls, model: torch.nn.Module, rank: int) -> TrainedModel:
        """A LoRA of ``rank`` on ``model``'s frozen weights, no perturbation (stage 1 and the attacks): θ_pre is the
        weights themselves (the same tensors, no copy)."""
        return cls(model, {name: param.detach() for name, param in model.named_parameters()}, lora_rank=rank)

    def _retie(self, modules: dict) -> list[str]:
        """Tied output embeddings share the input embedding's parameter: give the head the same parametrisation, so
        every pass sees one weight in both places."""
        model = self.model
        if not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
            return []
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if head is None or parametrize.is_parametrized(head, "weight") or not parametrize.is_parametrized(embed, "weight"):
            return []
        # head.weight is still the shared parameter (now the embedding's "original"): the same change goes on top.
        parametrize.register_parametrization(head, "weight", embed.parametrizations.weight[0], unsafe=True)
        return [name for name, module in modules.items() if module is head]

    def pass_with(self, draw):
        """Context: forward passes inside it use ``draw`` (None: clean; :data:`BASE`; a sampler draw)."""
        return self.state.use(draw)

    def checkpointing_kwargs(self) -> dict:
        return {"use_reentrant": False, "context_fn": self.state.checkpoint_context}

    def release(self) -> None:
        """Bake the clean weights (W_ft + B·A·α/r with LoRA) into the model and remove the parametrisations."""
        with torch.no_grad(), self.state.use(None):
            for module in list(self.model.modules()):
                if parametrize.is_parametrized(module):
                    for attribute in list(module.parametrizations):
                        parametrize.remove_parametrizations(module, attribute, leave_parametrized=True)
        if self._tied:
            self.model.tie_weights()
        for param in self.model.parameters():
            param.requires_grad_(True)

    def inner_shifts(self, mode: str, seed: int, rank: int) -> dict[int, InnerShift]:
        """Fresh inner fine-tuning shifts for a ``finetune`` draw, by tensor index (LoRA: the 2-D weights only)."""
        return {
            change.index: InnerShift(change.anchor, change.index, mode, seed, rank)
            for change in self.changes.values()
            if mode == "full" or change.anchor.dim() == 2
        }

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)
