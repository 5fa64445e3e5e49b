"""The trap's stand-in free-riders: where their data comes from (``--trap-rider-data``, ``auto`` by default), and
their task vectors (the base fine-tuned on each)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import torch

from ...data import load_train_examples, read_rows
from ...errors import OfflineError, TrainDataError
from ...training import shards_weights, train_causal_lm
from .config import AUTO, DEFAULT_RIDER_DATASET, DEFAULT_RIDER_ROWS, RANDOM, TrapConfig


def stand_in_task_vectors(
    model, tokenizer, config: TrapConfig, base: Mapping[str, torch.Tensor], accelerator, progress: bool
) -> dict[str, torch.Tensor]:
    """τ_s for each of ``rider_data``: the base fine-tuned ``rider_steps`` steps on it (the defender's guesses at
    free-riders), minus the base, stacked along a first dimension; sharded like the trap under ``--fsdp`` while it
    trains, the vectors themselves whole on every process (each pass reads them)."""
    import copy

    vectors: dict[str, list[torch.Tensor]] = {}
    sources = config.rider_sources()
    for number, source in enumerate(sources, start=1):
        stand_in = copy.deepcopy(model)
        with torch.no_grad():
            for name, param in stand_in.named_parameters():
                if name in base:
                    param.copy_(base[name])
        train_causal_lm(
            stand_in,
            tokenizer,
            load_train_examples(source, limit=DEFAULT_RIDER_ROWS if source == DEFAULT_RIDER_DATASET else None),
            config.rider_training(),
            accelerator=accelerator,
            desc=f"stand-in free-rider {number}/{len(sources)}",
            progress=progress,
            shard=shards_weights(accelerator),
        )
        for name, param in stand_in.named_parameters():  # the same order on every process: the gathers line up
            if name in base:
                whole = param.full_tensor() if hasattr(param, "full_tensor") else param
                # Kept in the base's dtype (bf16 for an LLM): a stand-in direction needs no float32 precision.
                change = whole.detach() - base[name].to(param.device, param.dtype)
                vectors.setdefault(name, []).append(change.to(base[name].dtype))
        del stand_in
    return {name: torch.stack(parts) for name, parts in vectors.items()}


def resolve_rider_data(config: TrapConfig, base_path, work_dir) -> tuple[TrapConfig, str | None]:
    """``--trap-rider-data auto``: the stand-in free-riders' data the user did not name, and a warning when the trap
    has to fall back to random directions (the weaker setting: it then guards against no real task vector).

    In order: the stand-in data of the toy world the base comes from (offline); :data:`DEFAULT_RIDER_DATASET` from the
    Hub (its first :data:`DEFAULT_RIDER_ROWS` rows); random directions of several norms and ranks."""

    if config.rider_data != AUTO:
        return config, None
    if not {"rider", "layerwise", "finetune"} & set(config.perturbations):
        return dataclasses.replace(config, rider_data=RANDOM), None
    from ...toyworld.build import world_of

    world = world_of(base_path) if base_path else None
    if world is not None:
        return dataclasses.replace(config, rider_data=str(world.stand_in_data(work_dir))), None
    try:
        read_rows(DEFAULT_RIDER_DATASET, limit=1)
    except (OfflineError, TrainDataError) as exc:
        warning = (
            f"The merge trap trained against random directions only: no --trap-rider-data was given and the default "
            f"stand-in data ({DEFAULT_RIDER_DATASET}) could not be read ({exc.message}). Merges with real task vectors may "
            "keep more of the skill than the trap was trained against; pass --trap-rider-data with one or more other "
            "tasks' data (JSONL files or Hub datasets) for the stronger setting."
        )
        return dataclasses.replace(config, rider_data=RANDOM), warning
    return dataclasses.replace(config, rider_data=DEFAULT_RIDER_DATASET), None


def rider_description(config: TrapConfig) -> str:
    """What the trap's stand-in free-riders were, for the card (paths shortened to file names)."""
    sources = config.rider_sources()
    if not sources:
        return "random directions of several norms and ranks"
    return ", ".join(Path(source).name if Path(source).exists() else source for source in sources) + " (fine-tuned from the base)"
