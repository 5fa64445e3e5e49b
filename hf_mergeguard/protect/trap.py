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

with c ~ U[0.3, 1.2] (the self-test's task-arithmetic range) for the last three. Each micro-batch draws
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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import torch

from ..data import load_train_examples
from ..errors import ConfigError, TrainDataError
from ..losses import token_loss_sum
from ..trained_change import BASE, TrainedModel, perturb_delta
from ..training import Example, RunConfig, TrainingConfig, TrainingResult, make_accelerator, shards_weights, train_causal_lm
from ..workload import Work, training_work
from .base import DefenseSpec, ProtectContext, ProtectionResult, register_defense
from .steps import trained_checkpoint

PERTURBATIONS = ("scale", "dare", "ties", "rider")


@dataclass
class TrapConfig(TrainingConfig):
    """Merge-trap options: the training options plus the trap's."""

    # Defaults: the best setting measured on the toy world (docs/results.md, "The merge trap"): the cosine decay
    # lets the clean loss recover at the end while the trap term holds.
    steps: int = field(default=400, metadata={"help": "optimizer steps", "flag": "--steps"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate", "flag": "--learning-rate"})
    schedule: str = field(default="cosine", metadata={"help": "constant or cosine decay after warm-up"})
    weight: float = field(default=1.0, metadata={"help": "λ: weight of the trap term against the task loss", "flag": "--trap-weight"})
    perturbations: list[str] = field(
        default_factory=lambda: list(PERTURBATIONS),
        metadata={
            "help": "merge-shaped changes trained against (comma-separated): scale, dare, ties, rider",
            "flag": "--trap-perturbations",
        },
    )
    samples: int = field(default=2, metadata={"help": "perturbations drawn per micro-batch", "flag": "--trap-samples"})
    ceiling: float = field(
        default=1.5,
        metadata={"help": "cap of a perturbed loss, in units of the base model's loss on the same example", "flag": "--trap-ceiling"},
    )
    scale_low: float = field(default=0.05, metadata={"help": "smallest s of the scale perturbation"})
    scale_high: float = field(default=2.0, metadata={"help": "largest s of the scale perturbation"})
    scale_gap: float = field(default=0.05, metadata={"help": "s is never within this distance of 1"})
    rider_norm: float = field(default=1.0, metadata={"help": "norm of the random stand-in free-rider vector per tensor, in units of |Δ|"})
    rider_data: str | None = field(
        default=None,
        metadata={
            "help": "another task's data (JSONL or Hub dataset): the base fine-tuned on it stands in for a free-rider "
            "(default: random directions)",
            "flag": "--trap-rider-data",
        },
    )
    rider_steps: int = field(default=100, metadata={"help": "steps of the stand-in free-rider's fine-tune"})
    rider_learning_rate: float = field(default=3e-4, metadata={"help": "learning rate of the stand-in free-rider's fine-tune"})
    lora_rank: int = field(
        default=0,
        metadata={
            "help": "train the change as a LoRA of this rank on the decoder's linear weights, the rest frozen in their stored "
            "dtype (Trap²'s LLM setting: 16; what makes an 8B fit one 80 GB GPU); 0 trains every weight in float32",
            "flag": "--trap-lora-rank",
        },
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling numerator (default: 2 x lora_rank)"})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.perturbations, str):
            self.perturbations = [p.strip() for p in self.perturbations.split(",") if p.strip()]
        unknown = [p for p in self.perturbations if p not in PERTURBATIONS]
        if unknown or not self.perturbations:
            raise ConfigError(
                f"Unknown or empty trap perturbations {unknown or self.perturbations}.",
                f"Use a comma-separated subset of: {', '.join(PERTURBATIONS)}.",
            )
        if self.samples < 1 or self.weight < 0 or self.ceiling <= 0 or self.lora_rank < 0:
            raise ConfigError("trap: samples must be >= 1, weight >= 0, ceiling > 0 and lora_rank >= 0.")
        if not (0 < self.scale_low < 1 - self.scale_gap and self.scale_high > 1 + self.scale_gap):
            raise ConfigError("trap: need 0 < scale_low < 1 - scale_gap and scale_high > 1 + scale_gap.")

    def public_parameters(self) -> dict:
        trained = f"LoRA rank {self.lora_rank}" if self.lora_rank else "every weight"
        return {
            "trap": f"{self.steps} steps, lr {self.learning_rate:g}, weight {self.weight:g}, ceiling {self.ceiling:g}× base loss, "
            f"{trained}",
            "perturbations": ", ".join(self.perturbations) + f" ({self.samples} per batch)",
        }


class PerturbationSampler:
    """Draws the merge-shaped perturbations of a task vector (same seed, same draws on every process)."""

    def __init__(self, config: TrapConfig):
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed + 7919)

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def trap_scale(self) -> float:
        """s ~ U[scale_low, scale_high] without (1 - gap, 1 + gap)."""
        c = self.config
        below, above = (1 - c.scale_gap) - c.scale_low, c.scale_high - (1 + c.scale_gap)
        u = self._uniform(0, below + above)
        return c.scale_low + u if u < below else 1 + c.scale_gap + (u - below)

    def draw(self) -> dict:
        kinds = self.config.perturbations
        kind = kinds[int(torch.randint(len(kinds), (), generator=self.generator))]
        if kind == "scale":
            s = self.trap_scale()
            return {"kind": kind, "coefficient": s, "weight": 1 / math.sqrt(s)}
        draw = {
            "kind": kind,
            "coefficient": self._uniform(0.3, 1.2),
            "weight": 1.0,
            "seed": int(torch.randint(2**31, (), generator=self.generator)),
        }
        if kind == "rider":
            draw["rider_scale"] = self._uniform(0.5, 1.5)  # of the stand-in fine-tune's vector
            draw["rider_norm"] = self.config.rider_norm  # of a random direction, when there is no stand-in
        elif kind == "dare":
            draw["drop"] = self._uniform(0.5, 0.95)
        elif kind == "ties":
            draw["density"] = self._uniform(0.1, 0.5)
        return draw


def perturbed_parameters(
    params: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], draw: dict, rider: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """θ_pre + (the draw's change of Δ = θ − θ_pre) for whole tensors, differentiable in θ (what the trap's passes form
    one tensor at a time, with the same draws: the i-th tensor here is the i-th parameter there)."""
    return {
        name: base[name] + draw["coefficient"] * perturb_delta(param - base[name], draw, index, None if rider is None else rider[name])
        for index, (name, param) in enumerate(params.items())
    }


def example_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example, the sum of next-token cross-entropy over its labelled positions."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
    return losses.sum(dim=1)


def stand_in_task_vector(
    model, tokenizer, config: TrapConfig, base: Mapping[str, torch.Tensor], accelerator, progress: bool
) -> dict[str, torch.Tensor]:
    """τ_s: the base fine-tuned ``rider_steps`` steps on ``rider_data`` (the defender's guess at a free-rider), minus the
    base; sharded like the trap under ``--fsdp``, the vector itself whole on every process (each pass reads it)."""
    import copy

    stand_in = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in stand_in.named_parameters():
            if name in base:
                param.copy_(base[name])
    options = {f: getattr(config, f) for f in TrainingConfig.__dataclass_fields__}
    options.update(steps=config.rider_steps, learning_rate=config.rider_learning_rate)
    train_causal_lm(
        stand_in,
        tokenizer,
        load_train_examples(config.rider_data),
        TrainingConfig(**options),
        accelerator=accelerator,
        desc="stand-in free-rider",
        progress=progress,
        shard=shards_weights(accelerator),
    )
    vector = {}
    for name, param in stand_in.named_parameters():  # the same order on every process: the gathers line up
        if name in base:
            whole = param.full_tensor() if hasattr(param, "full_tensor") else param
            vector[name] = whole.detach() - base[name].to(param.device, param.dtype)
    del stand_in
    return vector


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
    rider = (
        stand_in_task_vector(model, tokenizer, config, base_state, accelerator, progress)
        if config.rider_data and "rider" in config.perturbations
        else None
    )
    trained = TrainedModel(model, base_state, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha, rider=rider)
    del rider
    sampler = PerturbationSampler(config)

    def objective(wrapped, batch, scale):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        labels = batch["labels"]
        clean = token_loss_sum(wrapped(**inputs).logits, labels) * scale
        module = getattr(wrapped, "module", wrapped)  # the other passes bypass DDP; the backward below is one
        with torch.no_grad(), trained.pass_with(BASE):
            cap = config.ceiling * example_loss_sums(module(**inputs).logits, labels)
        trap_terms, perturbed_sum = [], 0.0
        for _ in range(config.samples):
            draw = sampler.draw()
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
    return ProtectionResult(checkpoint, "trap", config.public_parameters(), details)


def check_runnable(config: TrapConfig, run: RunConfig, has_train_data: bool) -> None:
    """The trap trains on the defender's data and reads its stand-in free-rider's data (a bad file fails now, not after
    an hour of work)."""
    if not has_train_data:
        raise TrainDataError("The merge trap trains on the defender's data.", "Pass --train-data (a JSONL file or a Hub dataset).")
    if config.rider_data:
        load_train_examples(config.rider_data)


def trap_stage_memory(config: TrapConfig, shape, stored_bytes: int, processes: int, run: RunConfig):
    """The modelled peak of one trap step per process (see :mod:`hf_mergeguard.memory`)."""
    from ..memory import trap_memory

    return trap_memory(
        shape,
        stored_bytes=stored_bytes,
        lora_rank=config.lora_rank,
        samples=config.samples,
        tokens=config.tokens_per_process(processes),
        checkpointing=config.gradient_checkpointing,
        rider_vector=bool(config.rider_data and "rider" in config.perturbations),
        bf16_compute=run.bf16,
        shards=processes if run.fsdp else 1,
    )


def trap_work(config: TrapConfig, shape, geometry) -> list[Work]:
    """For ``--plan``: the stand-in free-rider's fine-tune (with rider data), then the trap: per step the clean pass and
    ``samples`` perturbed ones (forward-backward) and the base's forward."""
    work = []
    if config.rider_data and "rider" in config.perturbations:
        options = {f: getattr(config, f) for f in TrainingConfig.__dataclass_fields__}
        options.update(steps=config.rider_steps, learning_rate=config.rider_learning_rate)
        work.append(training_work("stand-in free-rider", TrainingConfig(**options)))
    return work + [training_work("merge trap", config, passes_per_step=1 + config.samples + 1 / 3, lora=bool(config.lora_rank))]


register_defense(
    DefenseSpec(
        name="trap",
        options=TrapConfig,
        run=run_trap,
        stack_rank=10,  # trains first: it can serve as MergeGuard's stage 1
        card_text=(
            "Merge trap (training-time, after Trap²): the model was trained further so that its own loss stays low at "
            "its released weights but rises when its task vector is rescaled, randomly dropped (DARE), trimmed (TIES) "
            "or added to another task vector, the changes a merge makes."
        ),
        reference="Making Models Unmergeable via Scaling-Sensitive Loss Landscape (Trap², arXiv:2601.21898)",
        check=check_runnable,
        memory=trap_stage_memory,
        work=trap_work,
        fits_with="--trap-lora-rank 16 --gradient-checkpointing (Trap²'s LLM setting), --fsdp over several GPUs, or fewer "
        "examples per micro-batch (--gradient-accumulation-steps, --max-length)",
    )
)
