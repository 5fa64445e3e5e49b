"""The throughput table ``--plan`` prices a run with, and the prices: an estimate, not a measurement.

Generation is priced per decode step as the larger of reading the weights once (memory bandwidth) and the batch's
compute, plus a per-step overhead for eager ``transformers`` generation; prefill, log-likelihood and training by
their FLOPs (2·P per token forward, 6·P forward-backward, 4·P for a LoRA, one more forward with checkpointing) at a
stated share of the peak.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

from .workload import Work


@dataclass(frozen=True)
class Hardware:
    """One accelerator type's figures (per device)."""

    name: str
    memory_gb: float
    bandwidth_gbs: float  # memory bandwidth, GB/s
    tflops: float  # dense bf16 (float32 for the CPU), TFLOP/s
    decode_overhead_s: float  # per generated step of a batch: eager transformers' Python and kernel launches
    scoring_overhead_s: float  # per lm-eval scoring: building the model, moving it to the device, the harness
    host_gbs: float  # merges and transforms: GB/s of tensors read or written on the host


# Vendor peak figures (H100 SXM, A100 80 GB SXM, H200 SXM); the overheads are typical of eager HF generation of a
# 32-layer model (not measured here: no GPU was lent). The CPU row is this project's 2-core VM; with it the demo's
# plan (285 s) is above the demo's measured time (212 s cold).
HARDWARE = {
    "h100": Hardware("NVIDIA H100 80GB", 80, 3350, 989, 0.025, 20.0, 2.0),
    "a100": Hardware("NVIDIA A100 80GB", 80, 2039, 312, 0.03, 25.0, 2.0),
    "h200": Hardware("NVIDIA H200", 141, 4800, 989, 0.025, 20.0, 2.0),
    "cpu": Hardware("CPU (2 cores)", 24, 10, 0.05, 0.004, 0.6, 0.5),
}
BANDWIDTH_SHARE = 0.5  # of the peak bandwidth a decode step reaches
COMPUTE_SHARE = 0.35  # of the peak FLOP/s prefill and training reach (model FLOPs utilisation)


@dataclass
class TaskCost:
    """One task, per scoring."""

    name: str
    output_type: str
    prompts: int | None  # None: unknown (not in the table and not on disk)
    num_fewshot: int
    max_gen_toks: int
    context_tokens: int  # estimated prompt length with its few-shot examples
    choices: int = 1
    prompts_from: str = ""

    @property
    def generated_tokens(self) -> int:
        """The upper bound per scoring: every prompt generates to the cap."""
        return (self.prompts or 0) * self.max_gen_toks if self.output_type == "generate_until" else 0


def detect_hardware() -> tuple[str, int, str]:
    """(type, devices, how it was found): the CUDA devices visible to this process, else the CPU."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).lower()
        kind = next((key for key in ("h200", "h100", "a100") if key in name), "h100")
        devices = int(os.environ.get("WORLD_SIZE", torch.cuda.device_count()))
        found = f"detected: {torch.cuda.get_device_name(0)}" + ("" if kind in name else " (priced as an H100)")
        return kind, devices, found
    return "cpu", int(os.environ.get("WORLD_SIZE", 1)), "detected: no GPU"


def training_seconds(work: Work, parameters: int, hw: Hardware, devices: int) -> float:
    flops_per_token = (4 if work.lora else 6) * parameters + (2 * parameters if work.checkpointing else 0)
    compute = work.training_steps * work.tokens_per_step * work.passes_per_step * flops_per_token
    overhead = work.training_steps * work.passes_per_step * hw.decode_overhead_s * 4
    return compute / (hw.tflops * 1e12 * COMPUTE_SHARE * devices) + overhead


def scoring_seconds(tasks: Sequence[TaskCost], parameters: int, weight_bytes: int, batch: int, hw: Hardware) -> float:
    flops = hw.tflops * 1e12 * COMPUTE_SHARE
    seconds = hw.scoring_overhead_s
    for task in tasks:
        prompts = task.prompts or 0
        if task.output_type == "generate_until":
            batches = math.ceil(prompts / batch)
            read_weights = parameters * weight_bytes / (hw.bandwidth_gbs * 1e9 * BANDWIDTH_SHARE)
            step = max(read_weights, 2 * parameters * batch / flops) + hw.decode_overhead_s
            seconds += batches * task.max_gen_toks * step + prompts * task.context_tokens * 2 * parameters / flops
        else:
            seconds += prompts * task.choices * task.context_tokens * 2 * parameters / flops
    return seconds
