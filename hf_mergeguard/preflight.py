"""Before any work: will the run's training stages fit the device's memory? (:func:`check_memory`, called by ``protect``
once the inputs are open; the figures come from :mod:`hf_mergeguard.memory`.)"""

from __future__ import annotations

import logging

from .attacks.base import ATTACKS
from .config import ProtectConfig
from .errors import InsufficientMemoryError
from .io.checkpoint import Checkpoint
from .protect.base import DEFENSES
from .protect.stack import parse_method

log = logging.getLogger(__name__)


def stage_memories(config, shape, stored_bytes: int, processes: int) -> list:
    """The modelled peak per process of each training stage the run has (its defenses', for a ``ProtectConfig``, and
    its fine-tuning attacks'), with the options that lower each: ``[(StageMemory, fits_with)]``."""
    stages = [(DEFENSES.get(name), config.defenses[name]) for name in parse_method(config.method)] if hasattr(config, "method") else []
    if config.selftest.adaptive:
        stages += [(ATTACKS.get(name), None) for name in config.selftest.attack_names() if ATTACKS.get(name).needs_examples]
    modelled = []
    for spec, options in stages:
        if options is None:  # a fine-tuning attack
            needed = attack_memory(config.selftest, spec, shape, stored_bytes)
            fits_with = spec.fits_with
        else:
            needed = spec.memory(options, shape, stored_bytes, processes, config.run) if spec.memory else None
            fits_with = spec.fits_with
        if needed is not None:
            modelled.append((needed, fits_with))
    return modelled


def check_memory(
    config: ProtectConfig, model: Checkpoint, *, processes: int, device: str, free: tuple[float, str] | None = None
) -> list[dict]:
    """Before any work: the modelled peak memory of each defense's heaviest step and of each fine-tuning attack (per
    process) against what ``device`` has free (or ``free``: bytes and how to say them); a stage that cannot fit is
    refused, naming the options that lower it. Returns what was checked."""
    from .memory import DTYPE_BYTES, GB, Shape, available_memory

    shape = Shape.of(model.config)
    stored = max((DTYPE_BYTES.get(spec.dtype, 4) for spec in model.layout.values()), default=4)
    free, where = free or available_memory(device)
    checked = []
    for needed, fits_with in stage_memories(config, shape, stored, processes):
        # Processes on CPU share one RAM; on GPUs each has its own device.
        sharing = processes if str(device).startswith("cpu") else 1
        checked.append({"stage": needed.stage, "modelled_gb": round(needed.total / GB, 2), "free_gb": round(free / GB, 2)})
        log.info("Memory: %s needs about %s per process; %s", needed.stage, needed.describe(), where)
        if config.run.memory_check and needed.total * sharing > free:
            raise InsufficientMemoryError(
                f"{needed.stage} would need about {needed.describe()} per process (hf_mergeguard.memory's model), "
                f"{sharing} process(es) on this device, and {where}.",
                f"Pass {fits_with}; or --no-memory-check if you know it fits.",
            )
    return checked


def attack_memory(selftest, spec, shape, stored_bytes: int):
    """A fine-tuning attack's modelled peak: a float32 full fine-tune (batch 16 x 256), or a LoRA on the stored weights."""
    from .memory import finetune_memory, lora_finetune_memory

    tokens, stage = 16 * 256, f"the {spec.name} attack"
    if spec.memory is not None:
        return spec.memory(selftest, shape, stored_bytes)
    if selftest.attack_lora_rank:
        rank = selftest.attack_lora_rank
        return lora_finetune_memory(
            shape,
            stored_bytes=stored_bytes,
            lora_rank=rank,
            tokens=tokens,
            checkpointing=False,
            extra_copies=spec.held_model_copies,
            stage=stage,
        )
    return finetune_memory(shape, weight_bytes=4, tokens=tokens, checkpointing=False, extra_copies=spec.held_model_copies, stage=stage)
