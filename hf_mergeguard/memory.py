"""How much memory a stage needs, from the model's shape: the model behind the pre-flight check and the 8B figures.

Every figure here is a *model* (counted from parameter counts, dtypes, batch and sequence length), checked against
the peak resident memory measured on CPU at the Llama-3.2-1B shape (``benchmarks/llm_memory.py``, results in
``benchmarks/results/llm_memory.md``). What is counted, per process:

* weights, the trap's θ_pre (the anchor) and a stand-in free-rider vector, in the dtype they train in;
* trained parameters (every weight, or a LoRA's factors) with gradients and AdamW's two states, in float32;
* activations of every pass that keeps a graph: per decoder layer and token 8·h + 2·kv + 4·I values (norm inputs
  and outputs, q/k/v, attention and MLP outputs, SwiGLU's gate, up and product), or with gradient checkpointing
  one h-vector per layer plus one layer in full during the backward; the logits in the compute dtype plus two
  float32 copies (the upcast and the log-softmax the loss keeps);
* without checkpointing, the weights each trap pass forms (saved by the matmuls for the backward) and their masks;
* transient work of the largest tensor in float32, and a fixed overhead for the runtime (:data:`RUNTIME_BYTES`).

Not counted: allocator fragmentation (PyTorch's caching allocator can hold 5–15 % more on a GPU), the CUDA
context (~0.5 GB), other processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .architectures import Geometry, geometry_from_config

GB = 1024**3
RUNTIME_BYTES = 1 * GB  # Python, torch, transformers and lm-eval loaded (measured ~0.9 GB RSS on CPU)

DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


@dataclass(frozen=True)
class Shape:
    """The sizes the memory of a stage depends on."""

    parameters: int
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int
    vocab: int
    largest_tensor: int
    lora_pairs: int  # sum over the decoder's linear weights of (in + out): a LoRA of rank r has r x this many entries

    @classmethod
    def of(cls, config: Mapping) -> Shape:
        geometry = geometry_from_config(config)
        return cls.from_geometry(geometry)

    @classmethod
    def from_geometry(cls, g: Geometry) -> Shape:
        counts = {name: math.prod(g.expected_shape(name)) for name in g.expected_tensor_names()}
        q, kv = g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim
        h, i = g.hidden_size, g.intermediate_size
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        return cls(
            parameters=sum(counts.values()),
            layers=g.num_layers,
            hidden=h,
            intermediate=i,
            kv_dim=kv,
            vocab=g.vocab_size,
            largest_tensor=max(counts.values()),
            lora_pairs=g.num_layers * per_layer,
        )


@dataclass
class StageMemory:
    """The modelled peak of one stage: its parts in bytes (what the table and the pre-flight message show)."""

    stage: str
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def gigabytes(self) -> dict[str, float]:
        return {name: value / GB for name, value in self.parts.items()}

    def describe(self) -> str:
        biggest = sorted(self.parts.items(), key=lambda kv: -kv[1])[:3]
        return f"{self.total / GB:.1f} GB ({', '.join(f'{name} {value / GB:.1f}' for name, value in biggest)})"


def _activations(shape: Shape, tokens: int, compute_bytes: int, grad_passes: int, checkpointing: bool) -> dict[str, float]:
    """Activations kept for the backward of ``grad_passes`` passes over ``tokens`` tokens (per process)."""
    per_layer_token = 8 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate
    logits = tokens * shape.vocab * (compute_bytes + 8)
    if checkpointing:
        kept = grad_passes * shape.layers * tokens * shape.hidden * compute_bytes
        recompute = tokens * per_layer_token * compute_bytes  # one layer rebuilt at a time in the backward
        return {"activations": kept + recompute, "logits": grad_passes * logits}
    return {"activations": grad_passes * shape.layers * tokens * per_layer_token * compute_bytes, "logits": grad_passes * logits}


def trap_memory(
    shape: Shape,
    *,
    stored_bytes: int,
    lora_rank: int,
    samples: int,
    tokens: int,
    checkpointing: bool,
    rider_vectors: int = 0,
    inner_full: bool = False,
    lowrank_share: float = 0.0,
    bf16_compute: bool = False,
    weight_bytes: int | None = None,
    shards: int = 1,
) -> StageMemory:
    """The merge trap, per process (``tokens``: examples x max length of one micro-batch on one process;
    ``weight_bytes``: the dtype the weights are loaded in, by default the stored one for a LoRA and float32 for full
    training, what ``protect`` does; ``shards``: the processes FSDP2 shards the weights, the trained parameters and
    their AdamW state over; θ_pre and the stand-in vectors, in the stored dtype, stay whole on each)."""
    P = shape.parameters
    weight_bytes = weight_bytes or (stored_bytes if lora_rank else 4)
    compute = 2 if (bf16_compute or weight_bytes == 2) else 4
    parts = {"weights": P * weight_bytes / shards, "base (anchor)": P * stored_bytes}
    if shards > 1:
        parts["gathered layer"] = 2 * (P - shape.vocab * shape.hidden) / shape.layers * weight_bytes
    if rider_vectors:
        parts["stand-in free-riders"] = rider_vectors * P * stored_bytes
    if inner_full:  # the finetune perturbation's inner step on every weight: a float32 shift and its gradient
        parts["inner fine-tuning shift + grad"] = P * 8
    trained = lora_rank * shape.lora_pairs if lora_rank else P
    parts["trained + grads + AdamW"] = trained * 16 / shards
    parts.update(_activations(shape, tokens, compute, 1 + samples, checkpointing))
    if not checkpointing:
        parts["perturbed weights kept"] = samples * P * (compute + 1)  # the formed weight and its mask, per pass
    else:  # the LM head runs outside the checkpointed layers: its formed weight and mask stay, per perturbed pass
        parts["perturbed weights kept"] = samples * shape.vocab * shape.hidden * (compute + 1)
    parts["largest tensor work"] = 4 * shape.largest_tensor * 4
    if lowrank_share:
        # The lowrank draw's randomised SVD of the largest matrix (the embedding, vocab x hidden) keeps about four
        # float32 blocks of (rows + columns) x q, q = share x rank + 8 (1.33 GB at 1B: benchmarks/perturbation_work.py).
        parts["low-rank truncation work"] = 4 * (shape.vocab + shape.hidden) * (lowrank_share * shape.hidden + 8) * 4
    parts["runtime"] = RUNTIME_BYTES
    return StageMemory("merge trap", parts)


def lora_finetune_memory(
    shape: Shape,
    *,
    stored_bytes: int,
    lora_rank: int,
    tokens: int,
    checkpointing: bool,
    extra_copies: int = 0,
    stage: str = "LoRA fine-tuning",
) -> StageMemory:
    """A LoRA on frozen weights in their stored dtype (MergeGuard's stage 1, the attacks with --attack-lora-rank): no
    θ_pre copy (stage 1's base readings read the host copy of the base one layer at a time); ``extra_copies`` more
    model-sized tensor sets in the stored dtype (graderase's direction, and the base's copy while it is estimated)."""
    parts = {"weights": shape.parameters * stored_bytes, "trained + grads + AdamW": lora_rank * shape.lora_pairs * 16}
    if extra_copies:
        parts["held copies"] = extra_copies * shape.parameters * stored_bytes
    parts.update(_activations(shape, tokens, stored_bytes, 1, checkpointing))
    parts["largest tensor work"] = 3 * shape.largest_tensor * 4
    parts["runtime"] = RUNTIME_BYTES
    return StageMemory(stage, parts)


def finetune_memory(
    shape: Shape,
    *,
    weight_bytes: int,
    tokens: int,
    checkpointing: bool,
    extra_copies: int = 0,
    stage: str = "fine-tuning",
    shards: int = 1,
) -> StageMemory:
    """A full fine-tune with AdamW (MergeGuard's stage 1 and the attacks' fine-tunes, float32 master weights), with
    ``extra_copies`` more model-sized tensors held (graderase's direction); ``shards``: the processes FSDP2 shards the
    weights, gradients and AdamW states over (one decoder layer is gathered in full at a time)."""
    P = shape.parameters
    parts = {"weights": P * weight_bytes / shards, "grads + AdamW": P * 3 * weight_bytes / shards}
    if shards > 1:
        parts["gathered layer"] = 2 * (P - shape.vocab * shape.hidden) / shape.layers * weight_bytes
    if extra_copies:
        parts["held copies"] = extra_copies * P * weight_bytes
    parts.update(_activations(shape, tokens, weight_bytes, 1, checkpointing))
    parts["runtime"] = RUNTIME_BYTES
    return StageMemory(stage, parts)


def gradient_pass_memory(
    shape: Shape, *, stored_bytes: int, tokens: int, extra_copies: int, checkpointing: bool, stage: str
) -> StageMemory:
    """Gradients of every weight in the stored dtype with no optimizer over them (the layerwise attack learns one
    coefficient per block from them), with ``extra_copies`` model-sized tensors held in that dtype."""
    P = shape.parameters
    parts = {"weights": P * stored_bytes, "gradients": P * stored_bytes, "held copies": extra_copies * P * stored_bytes}
    parts.update(_activations(shape, tokens, stored_bytes, 1, checkpointing))
    parts["runtime"] = RUNTIME_BYTES
    return StageMemory(stage, parts)


def evaluation_memory(shape: Shape, *, stored_bytes: int, batch: int, context: int) -> StageMemory:
    """Scoring one model with lm-eval (``generate``, greedy): the weights and the KV cache of a batch."""
    kv_cache = batch * context * shape.layers * 2 * shape.kv_dim * stored_bytes
    parts = {
        "weights": shape.parameters * stored_bytes,
        "KV cache": kv_cache,
        "logits": batch * shape.vocab * 4 * 2,
        "runtime": RUNTIME_BYTES,
    }
    return StageMemory("self-test evaluation", parts)


def merge_memory(shape: Shape, *, stored_bytes: int) -> StageMemory:
    """Building one merge in host memory (mergekit's math): the merged tensors plus float32 work on the largest one
    (three inputs and the result)."""
    parts = {
        "merged model": shape.parameters * stored_bytes,
        "largest tensor work": 4 * shape.largest_tensor * 4,
        "runtime": RUNTIME_BYTES,
    }
    return StageMemory("self-test merge (host)", parts)


def available_memory(device: str | torch.device) -> tuple[float, str]:
    """Bytes the stage may use on ``device`` and what that is ("80.0 GB of cuda:0", "21.3 GB of free RAM")."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return float(free), f"{free / GB:.1f} GB free of {total / GB:.1f} GB on {device}"
    import psutil

    available = psutil.virtual_memory().available
    return float(available), f"{available / GB:.1f} GB of available RAM"
