"""Merge-trap training: keep the defender's loss low at its own weights, raise it under merge-shaped changes.

The objective extends Trap² ("Making Models Unmergeable via Scaling-Sensitive Loss Landscape", Jang et al.,
ICML 2026, arXiv:2601.21898), which trains L(θ_pre + Δ) − λ·E_s[w(s)·L(θ_pre + s·Δ)]
with s ~ U[0.05, 2] outside [0.95, 1.05] and w(s) = 1/√s, to every change a merge makes to a task vector:

* ``scale``  θ_pre + s·Δ                                   (task arithmetic / linear at λ ≠ 1; Trap² as written)
* ``dare``   θ_pre + c·(m ⊙ Δ)/(1 − p), m ~ Bernoulli(1 − p)  (DARE drops and rescales; p ~ U[0.5, 0.95])
* ``ties``   θ_pre + c·top_d(|Δ|) ⊙ Δ per tensor              (TIES / breadcrumbs trimming; d ~ U[0.1, 0.5])
* ``rider``  θ_pre + c·(Δ + r), r a stand-in free-rider task vector  (two-model merges, λ = 1 included): with
  ``rider_data``, a·τ_s, τ_s the task vector of the base fine-tuned ``rider_steps`` steps on that other dataset
  (a ~ U[0.5, 1.5]); without it, per tensor a random direction of the same norm as that tensor's Δ (times
  ``rider_norm``), drawn afresh each time

* ``della``  θ_pre + c·(m ⊙ Δ)/(1 − p_i), p_i = p ± ε by magnitude rank (DELLA's MAGPRUNE; p ~ U[0.3, 0.9], ε ≤ 0.1)
* ``lowrank`` θ_pre + c·U_k U_kᵀ Δ per matrix, k a share U[0.02, 0.3] of its rank (the ``lowrank`` attack's truncation)
* ``layerwise`` θ_pre + c_l·Δ + a_l·r with a coefficient per tensor for each vector (c_l ~ U[0.3, 1.5], a_l ~ U[0.5, 1.5]:
  asymmetric, per-layer coefficients, what the ``layerwise`` attack searches)
* ``finetune`` a ``rider`` merge, then ``finetune_steps`` inner fine-tuning steps on it (first-order, as in
  meta-learning defenses: the trap loss is taken after the steps, their direction is not trained through): each
  step moves every weight by −lr·sign(g) (Adam's first step) with lr ~ log-U[``finetune_lr``], either on every
  weight or as a LoRA of rank 8, chosen at random per draw (the ``recover``/``graderase`` attacks' two settings)

with c ~ U[0.3, 1.2] (the self-test's task-arithmetic range) for the merge-shaped ones. Stand-in free-riders ``r``:
each of ``rider_data`` (comma-separated files or Hub datasets) gives one, the base fine-tuned ``rider_steps`` steps
on it, and a draw takes one at random; without data, a random direction per tensor whose norm is
U[0.5, 2] × ``rider_norm`` × |Δ| and whose rank is one of ``rider_ranks`` (0: full rank). Each micro-batch draws
``samples`` perturbations. An unbounded −L would be maximised by making the perturbed model infinitely wrong
and drags the clean loss along; so each example's perturbed loss is capped at ``ceiling`` × the *base*
model's loss on that example: the trap only asks merges to be no better than the base, which is the goal.

So the loss of a micro-batch is

    L(θ) − λ · mean_k [ w_k · Σ_examples min(L_i(perturb_k(θ)), ceiling · L_i(θ_pre)) ]   (token-weighted)

with w_k = 1/√s for ``scale`` and 1 otherwise. Each term is a forward pass of the same model whose weights are
formed per tensor inside the pass (:mod:`hf_mergeguard.trained_change`: gradients flow to θ through the perturbation, and no
whole perturbed copy of the model is ever made); the base's loss is one more forward without gradients. A step
costs about (1 + samples) forward-backward passes and one forward; the run's seconds per step are in
``selftest.json``. Memory (``hf_mergeguard.memory`` models it, and a run that cannot fit is refused before any
work): the weights, θ_pre in their dtype, the trained parameters with AdamW state (all weights in float32, or a
LoRA of rank ``lora_rank`` on frozen weights in their stored dtype, Trap²'s LLM setting) and the activations of
1 + samples passes (one layer's with ``--gradient-checkpointing``). Because the cap is per example, N processes
give the weights of one.

Modules: :mod:`.config` (the options and the perturbation draws), :mod:`.stand_ins` (the stand-in free-riders), and
here the training loop, the defense's run and its registration.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict
from typing import Mapping, Sequence

import torch

from ...data import load_train_examples
from ...errors import TrainDataError
from ...losses import token_loss_sum
from ...trained_change import BASE, TrainedModel
from ...training import Example, RunConfig, TrainingResult, make_accelerator, shards_weights, train_causal_lm
from ...workload import Work, training_work
from ..base import DefenseSpec, ProtectContext, ProtectionResult, register_defense
from ..steps import trained_checkpoint
from .config import (
    AUTO,
    DEFAULT_RIDER_DATASET,
    INNER_LORA_RANK,
    LOWRANK_SHARES,
    PERTURBATIONS,
    RANDOM,
    PerturbationSampler,
    TrapConfig,
    perturbed_parameters,
)
from .stand_ins import resolve_rider_data, rider_description, stand_in_task_vectors

__all__ = [
    "AUTO",
    "DEFAULT_RIDER_DATASET",
    "PERTURBATIONS",
    "RANDOM",
    "PerturbationSampler",
    "TrapConfig",
    "merge_trap_finetune",
    "perturbed_parameters",
    "resolve_rider_data",
    "trap_stage_memory",
]

log = logging.getLogger(__name__)


def example_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example, the sum of next-token cross-entropy over its labelled positions."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
    return losses.sum(dim=1)


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def merge_trap_finetune(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    config: TrapConfig,
    *,
    base_state: Mapping[str, torch.Tensor],
    accelerator=None,
    progress: bool = True,
) -> TrainingResult:
    """Train ``model`` (the defender's fine-tune) in place with the merge-trap objective.

    Every weight of ``model`` trains (load it in float32: those are the master weights), or with ``config.lora_rank``
    a LoRA on its frozen weights (any dtype); either way ``model`` ends with the trained weights and no LoRA left.
    Under ``--fsdp`` (``shards_weights``) the weights, the LoRA factors and their optimizer state are sharded over the
    processes (θ_pre and the stand-in vector stay whole on each, in their own dtype) and the model stays sharded:
    read it with :func:`~hf_mergeguard.training.full_state_dict`.
    """
    accelerator = accelerator or make_accelerator()
    model.to(accelerator.device)
    riders = len(config.rider_sources()) if config.trains_riders else 0  # ``auto`` was resolved by run_trap
    rider = stand_in_task_vectors(model, tokenizer, config, base_state, accelerator, progress) if riders else None
    trained = TrainedModel(model, base_state, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha, rider=rider)
    del rider
    sampler = PerturbationSampler(config)

    def inner_finetune(module, inputs, labels, draw) -> None:
        """The ``finetune`` draw's inner steps on the perturbed model (first-order: the shifts are then constants)."""
        shifts = trained.inner_shifts(draw["inner_mode"], draw["seed"], INNER_LORA_RANK)
        draw["inner"] = shifts
        tensors = [tensor for shift in shifts.values() for tensor in shift.parameters()]
        for _ in range(config.finetune_steps):
            with trained.pass_with(draw):
                loss = token_loss_sum(module(**inputs).logits, labels)
            gradients = torch.autograd.grad(loss, tensors, materialize_grads=True)
            if distributed():  # the step of the whole micro-batch (summed over processes): N processes step as one
                for gradient in gradients:
                    torch.distributed.all_reduce(gradient)
            gradients = iter(gradients)
            for shift in shifts.values():
                shift.step([next(gradients) for _ in shift.parameters()], draw["inner_lr"])
        for shift in shifts.values():
            shift.freeze()

    def objective(wrapped, batch, scale):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        labels = batch["labels"]
        clean = token_loss_sum(wrapped(**inputs).logits, labels) * scale
        module = getattr(wrapped, "module", wrapped)  # the other passes bypass DDP; the backward below is one
        with torch.no_grad(), trained.pass_with(BASE):
            cap = config.ceiling * example_loss_sums(module(**inputs).logits, labels)
        trap_terms, perturbed_sum = [], 0.0
        for _ in range(config.samples):
            draw = sampler.draw(riders)
            if draw["kind"] == "finetune":
                inner_finetune(module, inputs, labels, draw)
            with trained.pass_with(draw):
                sums = example_loss_sums(module(**inputs).logits, labels)
            # Capped per example, so how the batch is split over processes and micro-batches changes nothing.
            trap_terms.append(draw["weight"] * torch.minimum(sums, cap).sum())
            perturbed_sum += float(sums.detach().sum()) / config.samples
        trap = torch.stack(trap_terms).mean() * scale  # a share of the global token mean, like the clean loss
        loss = clean - config.weight * trap
        # Logged as global token means (summed over micro-batches, averaged over processes like task_loss).
        return loss, {
            "task_loss": float(clean.detach()),
            "base_loss": float(cap.sum()) / config.ceiling * scale,
            "perturbed_loss": perturbed_sum * scale,
        }

    try:
        return train_causal_lm(
            model,
            tokenizer,
            examples,
            config,
            objective=objective,
            accelerator=accelerator,
            desc="merge-trap training",
            progress=progress,
            checkpointing_kwargs=trained.checkpointing_kwargs(),
            shard=shards_weights(accelerator),
        )
    finally:
        trained.release()


def run_trap(ctx: ProtectContext, config: TrapConfig) -> ProtectionResult:
    """Train the merge trap into the model; the trained checkpoint (resumable in the work folder)."""
    config, rider_warning = resolve_rider_data(config, ctx.base.path, ctx.work_dir)
    warnings = [rider_warning] if rider_warning else []
    if "finetune" in config.perturbations and shards_weights(ctx.accelerator):
        config = dataclasses.replace(config, perturbations=[p for p in config.perturbations if p != "finetune"] or ["scale"])
        warnings.append(
            "The merge trap ran without its finetune term: under --fsdp the inner fine-tuning steps are not supported. "
            "Fine-tuning attacks may recover more than the default trap allows; run without --fsdp (with "
            "--trap-lora-rank 16 an 8B fits one 80 GB GPU) for the default setting."
        )
    for warning in warnings:
        log.warning(warning)

    def train(model, examples):
        return merge_trap_finetune(
            model, ctx.tokenizer, examples, config, base_state=ctx.base.state_dict(), accelerator=ctx.accelerator, progress=ctx.progress
        )

    # Every weight trains in float32 (master weights); a LoRA trains on the weights as stored (bf16 for an LLM).
    checkpoint, record = trained_checkpoint(
        ctx,
        "trap-trained",
        "trap",
        train,
        needs="The merge trap trains on the defender's data",
        dtype=None if config.lora_rank else torch.float32,
    )
    details = {"config": asdict(config), "training": record}
    parameters = {**config.public_parameters(), "stand-in free-riders": rider_description(config)}
    return ProtectionResult(checkpoint, "trap", parameters, details, warnings=warnings)


def check_runnable(config: TrapConfig, run: RunConfig, has_train_data: bool) -> None:
    """The trap trains on the defender's data and reads its stand-in free-rider's data (a bad file fails now, not after
    an hour of work)."""
    if not has_train_data:
        raise TrainDataError("The merge trap trains on the defender's data.", "Pass --train-data (a JSONL file or a Hub dataset).")
    for source in config.rider_sources():
        load_train_examples(source)


def trap_stage_memory(config: TrapConfig, shape, stored_bytes: int, processes: int, run: RunConfig):
    """The modelled peak of one trap step per process (see :mod:`hf_mergeguard.memory`)."""
    from ...memory import trap_memory

    return trap_memory(
        shape,
        stored_bytes=stored_bytes,
        lora_rank=config.lora_rank,
        samples=config.samples,
        tokens=config.tokens_per_process(processes),
        checkpointing=config.gradient_checkpointing,
        rider_vectors=config.rider_count(),
        inner_full="finetune" in config.perturbations and "full" in config.inner_modes() and not run.fsdp,
        lowrank_share=LOWRANK_SHARES[1] if "lowrank" in config.perturbations else 0.0,
        bf16_compute=run.bf16,
        shards=processes if run.fsdp else 1,
    )


def trap_work(config: TrapConfig, shape, geometry) -> list[Work]:
    """For ``--plan``: the stand-in free-rider's fine-tune (with rider data), then the trap: per step the clean pass and
    ``samples`` perturbed ones (forward-backward) and the base's forward."""
    work = []
    if config.trains_riders:
        work += [training_work(f"stand-in free-rider {n + 1}", config.rider_training()) for n in range(config.rider_count())]
    # A finetune draw (one kind in len(perturbations)) adds finetune_steps forward-backward passes.
    inner = config.samples * config.finetune_steps / len(config.perturbations) if "finetune" in config.perturbations else 0
    passes = 1 + config.samples + inner + 1 / 3
    return work + [training_work("merge trap", config, passes_per_step=passes, lora=bool(config.lora_rank))]


register_defense(
    DefenseSpec(
        name="trap",
        options=TrapConfig,
        run=run_trap,
        stack_rank=10,  # trains first: it can serve as MergeGuard's stage 1
        card_text=(
            "Merge trap (training-time, after Trap²): the model was trained further so that its own loss stays low at "
            "its released weights but rises under the changes merges and free-riders make to its task vector (those "
            "listed under perturbations: rescaled, randomly dropped as DARE or DELLA drop, trimmed as TIES trims, "
            "truncated to low rank, added to stand-in free-riders' task vectors with per-layer coefficients, and "
            "fine-tuned a step further). The self-test below measures what it holds against merges and attacks it "
            "was not trained on."
        ),
        reference="Making Models Unmergeable via Scaling-Sensitive Loss Landscape (Trap², arXiv:2601.21898)",
        check=check_runnable,
        memory=trap_stage_memory,
        work=trap_work,
        fits_with="--trap-lora-rank 16 --gradient-checkpointing (Trap²'s LLM setting), --fsdp over several GPUs, or fewer "
        "examples per micro-batch (--gradient-accumulation-steps, --max-length)",
    )
)
