"""MergeGuard stage 1, density-aware fine-tuning: task loss + alpha * a per-layer L2 term.

The paper (eq. 3) writes L = L_task + alpha * sum_l ||theta_l||^2, "applied layer-wise so that each layer is
regularized independently", pulling weights toward zero. It does not say whether the norm is summed or
averaged per layer, and a pull toward zero on a pretrained LLM fights the pretraining itself; so the readings
are options (``reading``) and the self-test says which one protects:

* ``paper``       alpha * sum_l ||theta_l||^2              (to zero, summed: the paper as written)
* ``paper-mean``  alpha * sum_l mean(theta_l^2)            (to zero, averaged per layer)
* ``base``        alpha * sum_l ||theta_l - theta_pre,l||^2 (toward the base, summed)
* ``base-mean``   alpha * sum_l mean((theta_l - theta_pre,l)^2)

A "layer" is one parameter tensor. The term is added once per optimizer step (split over micro-batches) on
every process; DDP averages identical gradients, so it is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from ...errors import ConfigError
from ...losses import token_loss_sum
from ...training import Example, TrainingConfig, TrainingResult, make_accelerator, shards_weights, train_causal_lm

READINGS = ("paper", "paper-mean", "base", "base-mean")


@dataclass
class Stage1Config(TrainingConfig):
    """Stage 1 options: the training options plus the regulariser's strength and reading."""

    # 0.001, a tenth of the paper's 0.01: of every reading and alpha measured (docs/results.md, "MergeGuard"),
    # the only one that kept the toy world's model within the standalone gate.
    alpha: float = field(default=0.001, metadata={"help": "strength of the per-layer L2 term (the paper: 0.01)", "flag": "--alpha"})
    reading: str = field(
        default="paper", metadata={"help": "what the L2 term measures: paper | paper-mean | base | base-mean", "flag": "--stage1-reading"}
    )
    lora_rank: int = field(
        default=0,
        metadata={
            "help": "train stage 1 as a LoRA of this rank on the frozen weights (the L2 term then reads each projection as "
            "W + B·A, one layer at a time: what fits an 8B on one 80 GB GPU); 0 trains every weight in float32",
            "flag": "--stage1-lora-rank",
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.reading not in READINGS:
            raise ConfigError(f"Unknown stage-1 reading {self.reading!r}.", f"Use one of: {', '.join(READINGS)}.")
        if self.lora_rank < 0:
            raise ConfigError("--stage1-lora-rank must be 0 (every weight) or a positive rank.")


def l2_term(model: torch.nn.Module, reading: str, base: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The regulariser of ``reading`` over every trainable tensor of ``model`` (DDP-wrapped or not)."""
    terms = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if reading.startswith("base"):
            key = name[len("module.") :] if name.startswith("module.") else name
            target = base[key].to(param.device, param.dtype)
            diff = param - target
        else:
            diff = param
        squares = diff.float().pow(2)
        terms.append(squares.mean() if reading.endswith("mean") else squares.sum())
    return torch.stack(terms).sum()


def density_aware_finetune(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    config: Stage1Config,
    *,
    base_state: Mapping[str, torch.Tensor] | None = None,
    accelerator=None,
    progress: bool = True,
) -> TrainingResult:
    """Run stage 1 on ``model`` in place. ``base_state`` is needed by the ``base*`` readings."""
    if config.reading.startswith("base") and base_state is None:
        raise ConfigError(f"Stage-1 reading {config.reading!r} needs the base model's weights.")
    accelerator = accelerator or make_accelerator()
    if config.lora_rank:
        return _lora_stage1(model, tokenizer, examples, config, base_state, accelerator, progress)
    if shards_weights(accelerator):
        return _sharded_stage1(model, tokenizer, examples, config, base_state, accelerator, progress)
    if base_state is not None:
        base_state = {k: v.to(accelerator.device) for k, v in base_state.items()}
    share = 1.0 / config.gradient_accumulation_steps

    def objective(wrapped, batch, scale):
        logits = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        task = token_loss_sum(logits, batch["labels"]) * scale
        reg = l2_term(wrapped, config.reading, base_state)
        loss = task + config.alpha * share * reg
        # Logs are averaged over processes, and the regulariser is the same on each.
        return loss, {"task_loss": float(task.detach()), "l2": float(reg.detach()) * share}

    return train_causal_lm(
        model, tokenizer, examples, config, objective=objective, accelerator=accelerator, desc="stage 1 (density-aware)", progress=progress
    )


def add_lora_l2_gradients(changes: Mapping, reading: str, alpha: float, targets: Mapping[str, torch.Tensor] | None = None) -> None:
    """Add α·dR/d(factors) of the L2 term to the LoRA factors' gradients, one layer at a time: over θ = W + s·B·A,
    dR/dθ = 2·(θ − target) (over its size for the ``-mean`` readings), dR/dA = s·Bᵀ·dR/dθ, dR/dB = s·dR/dθ·Aᵀ. No graph
    and no full-size float32 copy of the model is kept. The frozen tensors' terms are constants and drop out."""
    with torch.no_grad():
        for name, change in changes.items():
            if change.lora_A is None:
                continue
            theta = change.anchor.float() + (change.lora_B @ change.lora_A) * change.scaling  # anchor: the frozen W
            if targets is not None:
                theta -= targets[name].to(theta.device, torch.float32)
            d_theta = 2 * theta / (theta.numel() if reading.endswith("mean") else 1)
            for factor, grad in ((change.lora_A, change.lora_B.T @ d_theta), (change.lora_B, d_theta @ change.lora_A.T)):
                step = alpha * change.scaling * grad
                factor.grad = step if factor.grad is None else factor.grad + step


def _lora_stage1(model, tokenizer, examples, config: Stage1Config, base_state, accelerator, progress) -> TrainingResult:
    """Stage 1 as a LoRA on the frozen weights, the L2 term added to the factors' gradients once per step."""
    from ...trained_change import TrainedModel

    model.to(accelerator.device)
    trained = TrainedModel.lora(model, config.lora_rank)
    targets = {name: base_state[name] for name in trained.changes} if config.reading.startswith("base") else None
    try:
        return train_causal_lm(
            model,
            tokenizer,
            examples,
            config,
            accelerator=accelerator,
            desc="stage 1 (density-aware, LoRA)",
            progress=progress,
            on_gradients=lambda unwrapped: add_lora_l2_gradients(trained.changes, config.reading, config.alpha, targets),
            checkpointing_kwargs={"use_reentrant": False},
        )
    finally:
        trained.release()


def _sharded_stage1(model, tokenizer, examples, config: Stage1Config, base_state, accelerator, progress) -> TrainingResult:
    """Stage 1 with its weights sharded over the processes (``--fsdp``): the task loss through the sharded model, the
    L2 term's gradient added to each process's shard once per step (elementwise: no communication), its value summed
    over the processes for the log. The same update as the unsharded run."""
    import torch.distributed as dist
    from torch.distributed.tensor import distribute_tensor

    values: list[float] = []

    def add_l2_gradients(unwrapped):
        total = torch.zeros((), device=accelerator.device)
        with torch.no_grad():
            for name, param in unwrapped.named_parameters():
                if param.grad is None:
                    continue
                local = param.to_local().float()
                if config.reading.startswith("base"):
                    target = distribute_tensor(
                        base_state[name].to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
                    )
                    local = local - target.to_local().float()
                size = param.numel() if config.reading.endswith("mean") else 1
                param.grad.to_local().add_((2 * config.alpha / size) * local.to(param.grad.dtype))
                total += local.pow(2).sum() / size
        dist.all_reduce(total)
        values.append(float(total))

    result = train_causal_lm(
        model,
        tokenizer,
        examples,
        config,
        accelerator=accelerator,  # the task loss alone (the default objective); the L2 term comes in add_l2_gradients
        desc="stage 1 (density-aware, sharded)",
        progress=progress,
        on_gradients=add_l2_gradients,
        shard=True,
    )
    for log, value in zip(result.logs, values):
        log["l2"] = value
    return result
