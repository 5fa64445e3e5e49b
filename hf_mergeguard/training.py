"""One accelerate training loop for every fine-tune the tool runs.

Used by the toy world, MergeGuard stage 1, the merge-trap objective and the recovery attacks. Each
optimizer step draws one *global* batch from a seeded generator; under several processes every process
takes its own slice of it, and losses are token sums scaled by the global token count, so one process and
N processes compute the same gradient (DDP averages it) and end with the same weights up to float error.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from .errors import ConfigError, TrainingError
from .losses import token_loss_sum


@dataclass(frozen=True)
class Example:
    """One training example: loss on ``completion`` only (``prompt`` empty for plain text)."""

    prompt: str
    completion: str


@dataclass
class RunConfig:
    """How a run executes, for every stage of it: where, at what precision, sharded or not, with which seed."""

    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda when available)", "flag": "--device"})
    seed: int = field(default=0, metadata={"help": "seed of training, random merges and attacks", "flag": "--seed"})
    bf16: bool = field(default=False, metadata={"help": "train in bf16 mixed precision", "flag": "--bf16"})
    fsdp: bool = field(
        default=False,
        metadata={
            "help": "shard training over the processes with FSDP2 (the merge trap and MergeGuard's full-weight stage 1; "
            "saves the full weights)",
            "flag": "--fsdp",
        },
    )
    process_group_timeout: float = field(
        default=240.0,
        metadata={
            "help": "minutes a process waits for the others at a collective before the run is aborted (torch's default, "
            "10 for NCCL, is shorter than one scoring of an 8B on GSM8K)",
            "flag": "--process-group-timeout",
        },
    )
    memory_check: bool = field(
        default=True,
        metadata={
            "help": "refuse, before any work, a training stage whose modelled peak memory is above the device's free memory",
            "flag": "--memory-check/--no-memory-check",
        },
    )


@dataclass
class TrainingConfig:
    """Options of a fine-tuning run (every field is a YAML option of the stages that train)."""

    steps: int = field(default=100, metadata={"help": "optimizer steps", "flag": "--steps"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate", "flag": "--learning-rate"})
    batch_size: int = field(default=16, metadata={"help": "examples per optimizer step, over all processes", "flag": "--train-batch-size"})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "micro-batches per step", "flag": "--gradient-accumulation-steps"}
    )
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    schedule: str = field(default="constant", metadata={"help": "constant or cosine decay after warm-up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping (None: off)"})
    max_length: int = field(default=512, metadata={"help": "tokens per example (longer ones are cut)", "flag": "--max-length"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute each layer's activations in the backward pass (less memory, about a third more compute)",
            "flag": "--gradient-checkpointing",
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of batch order and dropout", "flag": "--seed"})

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule must be 'constant' or 'cosine', not {self.schedule!r}.")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ConfigError(
                f"--train-batch-size {self.batch_size} is not a multiple of --gradient-accumulation-steps "
                f"{self.gradient_accumulation_steps}.",
                "Choose a batch size that the accumulation steps divide.",
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def tokens_per_process(self, processes: int) -> int:
        """At most how many tokens one process holds in one micro-batch (what activations scale with)."""
        micro = self.batch_size // self.gradient_accumulation_steps
        return -(-micro // processes) * self.max_length


@dataclass
class TrainingResult:
    losses: list[float]
    seconds: float
    seconds_per_step: float
    logs: list[dict] = field(default_factory=list)


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text by default (Llama-3's and Gemma's BOS; nothing for Qwen2 or the toy
    world). lm-eval encodes every prompt with them, so training does too: the model learns what it is scored on."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def encode_examples(tokenizer, examples: Sequence[Example], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (-100 on the prompt) for each example: the tokenizer's prefix (BOS) unless the text already
    starts with it (a chat template writes it), the prompt, the completion and an EOS token."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prefix = special_prefix(tokenizer)
    bos_text = tokenizer.decode(prefix) if prefix else None
    # One batched call per side: the fast tokenizer is much quicker on lists than on single strings.
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    encoded = []
    for example, prompt_ids, completion_ids in zip(examples, prompts, completions):
        prompt_ids = prompt_ids if example.prompt else []
        text = example.prompt or example.completion
        if prefix and not (bos_text and text.startswith(bos_text)):
            prompt_ids = prefix + list(prompt_ids)
        completion_ids = list(completion_ids) + eos
        ids = (list(prompt_ids) + completion_ids)[:max_length]
        labels = ([-100] * len(prompt_ids) + completion_ids)[:max_length]
        if any(label != -100 for label in labels):
            encoded.append((ids, labels))
    return encoded


def collate(items: Sequence[tuple[list[int], list[int]]], pad_id: int, length: int | None = None) -> dict:
    """Right-pad a list of (ids, labels) to ``length`` (default: the longest)."""
    length = length or max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), -100, dtype=torch.long)
    attention = torch.zeros((len(items), length), dtype=torch.long)
    for row, (ids, labs) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def padding_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def loss_batches(tokenizer, examples: Sequence[Example], *, max_length: int, batch_size: int, device) -> tuple[list[dict], int]:
    """``examples`` encoded and collated into batches on ``device`` (for :func:`mean_batch_loss`), and their token count."""
    encoded = encode_examples(tokenizer, examples, max_length)
    pad = padding_id(tokenizer)
    batches = [{k: v.to(device) for k, v in collate(encoded[i : i + batch_size], pad).items()} for i in range(0, len(encoded), batch_size)]
    return batches, sum(len(ids) for ids, _ in encoded)


# An objective gets the (wrapped) model, a local micro-batch and the factor that turns a token-loss sum
# into this process's share of the global mean; it returns the loss to backpropagate and numbers to log.
Objective = Callable[[torch.nn.Module, dict, float], tuple[torch.Tensor, dict]]


def cross_entropy_objective(model: torch.nn.Module, batch: dict, scale: float) -> tuple[torch.Tensor, dict]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = token_loss_sum(logits, batch["labels"]) * scale
    return loss, {"task_loss": float(loss.detach())}


def _lr_lambda(config: TrainingConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "cosine":
            progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def make_accelerator(run: RunConfig | None = None):
    """The run's ``Accelerator`` (with ``--fsdp``, the trap and full-weight stage 1 are sharded with FSDP2:
    :func:`shards_weights`)."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    run = run or RunConfig()
    # Every process loads the same files, so buffers agree: DDP need not broadcast them each step (the trap's
    # theta_pre anchors are buffers as large as the model).
    handlers = [
        DistributedDataParallelKwargs(broadcast_buffers=False),
        InitProcessGroupKwargs(timeout=timedelta(minutes=run.process_group_timeout)),
    ]
    kwargs = {"kwargs_handlers": handlers}
    accelerator = Accelerator(mixed_precision="bf16" if run.bf16 else "no", **kwargs)
    accelerator.shard_weights = run.fsdp  # the trap and stage 1 ask train_causal_lm to shard (GPUs, or CPU over gloo)
    return accelerator


def shards_weights(accelerator) -> bool:
    """The run trains with its weights sharded over its processes (``--fsdp``, FSDP2)."""
    return bool(getattr(accelerator, "shard_weights", False)) and accelerator.num_processes > 1


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2: each decoder layer its own unit (its weights gathered only while it runs), then the rest."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors; for a sharded model, gathered on the first process (on CPU; the others get nothing)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def train_causal_lm(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    config: TrainingConfig,
    *,
    objective: Objective = cross_entropy_objective,
    accelerator=None,
    desc: str = "fine-tuning",
    progress: bool = True,
    on_gradients: Callable[[torch.nn.Module], None] | None = None,
    checkpointing_kwargs: dict | None = None,
    shard: bool = False,
) -> TrainingResult:
    """Fine-tune ``model`` in place on ``examples`` and return the loss history.

    Args:
        model: a ``transformers`` causal LM (its weights are updated in place; after the call it is the
            unwrapped model again, on the accelerator's device).
        tokenizer: its tokenizer (pad and EOS ids are used).
        examples: the training data.
        config: see :class:`TrainingConfig`.
        objective: the loss; default next-token cross-entropy on completions.
        accelerator: the run's ``accelerate.Accelerator``; default: a plain one (one process, float32).
        on_gradients: called with the unwrapped model once its gradients of a step are complete, before
            clipping (GradErase projects them there).
        checkpointing_kwargs: ``torch.utils.checkpoint`` options when ``config.gradient_checkpointing`` (the trap
            passes a ``context_fn`` that restores each pass's perturbation in the recomputation).
        shard: shard the weights over the processes with FSDP2 (the trap, its stand-in free-rider and MergeGuard
            stage 1 under ``--fsdp``; the model stays sharded: read it with :func:`full_state_dict`). Every other
            fine-tune is replicated (DDP).
    """
    from .progress import progress_bar

    accelerator = accelerator or make_accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    encoded = encode_examples(tokenizer, examples, config.max_length)
    if not encoded:
        raise TrainingError("No usable training examples (every completion is empty or cut off).")
    micro = config.batch_size // config.gradient_accumulation_steps
    if micro < world:
        raise TrainingError(
            f"A micro-batch of {micro} examples cannot give each of {world} processes at least one.",
            "Raise --train-batch-size (or lower --gradient-accumulation-steps) to at least one example per process per micro-batch.",
        )
    pad_id = padding_id(tokenizer)

    torch.manual_seed(config.seed)
    if config.gradient_checkpointing:
        enable_checkpointing(model, checkpointing_kwargs or {"use_reentrant": False})
    model.train()
    sharded = shard and accelerator.num_processes > 1
    if sharded:
        model.to(accelerator.device)
        shard_model(model)  # before the optimizer: it holds the shards
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    # The scheduler is not passed to prepare(): accelerate would step it once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    if sharded:
        wrapped = model  # FSDP2 averages the gradients over processes as DDP would
    else:
        wrapped, optimizer = accelerator.prepare(model, optimizer)

    generator = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    losses: list[float] = []
    logs: list[dict] = []
    start = time.perf_counter()
    bar = progress_bar(range(config.steps), desc=desc, disable=not (progress and accelerator.is_main_process), leave=False)
    for step in bar:
        # One global batch for this step, identical on every process.
        while len(order) < config.batch_size:
            order += torch.randperm(len(encoded), generator=generator).tolist()
        chosen = [encoded[i] for i in order[: config.batch_size]]
        del order[: config.batch_size]
        length = max(len(ids) for ids, _ in chosen)
        step_tokens = sum(sum(1 for label in labels[1:] if label != -100) for _, labels in chosen)
        scale = world / max(1, step_tokens)
        step_log: dict[str, float] = {}
        for micro_index in range(config.gradient_accumulation_steps):
            micro_batch = chosen[micro_index * micro : (micro_index + 1) * micro]
            local = micro_batch[rank * micro // world : (rank + 1) * micro // world]  # uneven when world does not divide micro
            batch = {k: v.to(accelerator.device) for k, v in collate(local, pad_id, length).items()}
            last = micro_index == config.gradient_accumulation_steps - 1
            if sharded:
                wrapped.set_requires_gradient_sync(last)
                context = accelerator.autocast()  # the model is not prepared: the run's precision applies here
            else:
                context = accelerator.no_sync(wrapped) if not last else contextlib.nullcontext()
            with context:
                loss, log = objective(wrapped, batch, scale)
                accelerator.backward(loss)
            for key, value in log.items():
                step_log[key] = step_log.get(key, 0.0) + value
        if on_gradients is not None:
            on_gradients(accelerator.unwrap_model(wrapped))
        if config.max_grad_norm and sharded:
            torch.nn.utils.clip_grad_norm_([p for p in wrapped.parameters() if p.grad is not None], config.max_grad_norm)
        elif config.max_grad_norm:
            accelerator.clip_grad_norm_(wrapped.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total = _reduce_mean(accelerator, step_log.get("task_loss", 0.0))
        if not math.isfinite(total):
            raise TrainingError(
                f"Training diverged at step {step}: the loss is {total}.",
                "Lower --learning-rate (or the regularisation strength) and rerun.",
            )
        losses.append(total)
        logs.append({k: _reduce_mean(accelerator, v) for k, v in step_log.items()})
        bar.set_postfix(loss=f"{total:.4f}")
    seconds = time.perf_counter() - start
    unwrapped = accelerator.unwrap_model(wrapped)
    unwrapped.eval()
    if config.gradient_checkpointing:
        disable = getattr(unwrapped, "activation_checkpointing_disable", None) or unwrapped.gradient_checkpointing_disable
        disable()
    # Release the DDP wrapper and optimizer state; the caller keeps the (updated) model.
    accelerator.free_memory()
    return TrainingResult(losses=losses, seconds=seconds, seconds_per_step=seconds / max(1, config.steps), logs=logs)


def enable_checkpointing(model, kwargs: dict) -> None:
    """Gradient (activation) checkpointing of every decoder layer, with ``torch.utils.checkpoint`` options ``kwargs``
    (transformers >= 5.x names it ``activation_checkpointing_enable``; earlier 5.x ``gradient_checkpointing_enable``)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _reduce_mean(accelerator, value: float) -> float:
    """Mean of a logged number over processes (the task loss of each is scaled by the process count, so the
    mean is the global token mean; numbers identical on every process stay as they are)."""
    if accelerator.num_processes == 1:
        return float(value)
    tensor = torch.tensor([float(value)], device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="mean"))
