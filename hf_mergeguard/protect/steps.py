"""Resumable steps: a step's folder counts as finished only once its ``.done.json`` record exists (written last), so
rerunning the same command after a crash continues from the last finished step."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import torch

from ..errors import TrainDataError
from ..io.atomic import write_text_atomically
from ..io.checkpoint import Checkpoint
from ..io.writer import stamp_metadata, write_checkpoint
from ..training import full_state_dict
from .base import ProtectContext

log = logging.getLogger(__name__)


def done_marker(folder: Path) -> Path:
    return folder.parent / f"{folder.name}.done.json"


def finished(folder: Path) -> dict | None:
    """The record of a finished step (written last, so its presence means the step completed)."""
    marker = done_marker(folder)
    if marker.is_file() and folder.exists():
        return json.loads(marker.read_text())
    return None


def mark_finished(folder: Path, record: dict) -> None:
    write_text_atomically(done_marker(folder), json.dumps(record, indent=2, default=str))


def trained_checkpoint(ctx: ProtectContext, step: str, method: str, train: Callable, *, needs: str, dtype=torch.float32):
    """Fine-tune ``ctx.model`` with ``train(model, examples) -> TrainingResult`` into the step folder ``step``.

    The model is loaded in ``dtype`` (float32: master weights for full fine-tuning; None: as stored, for a LoRA on
    frozen weights) and saved in the stored dtype. Resumable: a finished step is reused. Returns the checkpoint and the
    step's record (losses, last logs, time).
    """
    folder = ctx.step_dir(step)
    record = finished(folder)
    if record is not None:
        log.info("%s: reusing the finished run in %s", step, folder)
        return Checkpoint(folder), record
    if ctx.train_examples is None:
        raise TrainDataError(f"{needs}.", "Pass --train-data (a JSONL file or a Hub dataset).")
    model = ctx.model.load_model(dtype=dtype, device=ctx.device)
    result = train(model, ctx.train_examples())
    record = {"losses": result.losses, "logs": result.logs[-1:], "seconds": result.seconds, "seconds_per_step": result.seconds_per_step}
    state = full_state_dict(model)  # every process takes part in gathering sharded weights (--fsdp)
    if ctx.is_main:
        layout = ctx.model.layout
        tensors = {k: v.detach().to("cpu") for k, v in state.items() if k in layout}
        write_checkpoint(
            folder,
            ((name, tensors[name].to(layout[name].dtype)) for name in layout),
            layout,
            companions_from=ctx.model,
            metadata=stamp_metadata(method=method),
            overwrite=True,
        )
        mark_finished(folder, record)
    ctx.wait()
    return Checkpoint(folder), record
