"""What every defense gets (a :class:`ProtectContext`) and returns (a :class:`ProtectionResult`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..checkpoint import Checkpoint, stamp_metadata, write_checkpoint, write_text_atomically
from ..errors import TrainDataError
from ..training import Example

log = logging.getLogger(__name__)


@dataclass
class ProtectContext:
    """The inputs of a protection run. Inputs are read-only; every output goes under ``work_dir``.

    Args:
        model: the defender's fine-tune (or the output of the previous defense of a stack).
        base: the public base model it was fine-tuned from.
        original: the defender's fine-tune as given by the user (for reports), same as ``model`` for the first
            defense of a stack.
        tokenizer: the model's tokenizer.
        train_examples: loads the defender's training data on first use (None when none was given).
        evaluator: an :class:`~hf_mergeguard.evaluation.Evaluator` on the defender's tasks (exact criticality).
        work_dir: where the defense writes its steps (resumable).
        accelerator: the run's ``accelerate.Accelerator``.
    """

    model: Checkpoint
    base: Checkpoint
    original: Checkpoint
    tokenizer: Any
    train_examples: Callable[[], Sequence[Example]] | None
    evaluator: Any
    work_dir: Path
    accelerator: Any
    device: str = "cpu"
    progress: bool = True
    seed: int = 0
    metadata: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def step_dir(self, name: str) -> Path:
        return self.work_dir / name


@dataclass
class ProtectionResult:
    """A protected checkpoint (in the work folder), what may be published about it, and what may not.

    ``public_parameters`` go into the card; ``details`` into ``selftest.json``; ``secret`` (a key that
    undoes the protection) only ever into the owner's key file.
    """

    checkpoint: Checkpoint
    method: str
    public_parameters: dict
    details: dict = field(default_factory=dict)
    secret: dict | None = None


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


def trained_checkpoint(ctx: ProtectContext, step: str, method: str, train: Callable, *, needs: str):
    """Fine-tune ``ctx.model`` with ``train(model, examples) -> TrainingResult`` into the step folder ``step``.

    Resumable: a finished step is reused. Returns the checkpoint and the step's record (losses, last logs, time).
    """
    folder = ctx.step_dir(step)
    record = finished(folder)
    if record is not None:
        log.info("%s: reusing the finished run in %s", step, folder)
        return Checkpoint(folder), record
    if ctx.train_examples is None:
        raise TrainDataError(f"{needs}.", "Pass --train-data (a JSONL file or a Hub dataset).")
    model = ctx.model.load_model(dtype=torch.float32, device=ctx.device)
    result = train(model, ctx.train_examples())
    record = {"losses": result.losses, "logs": result.logs[-1:], "seconds": result.seconds, "seconds_per_step": result.seconds_per_step}
    if ctx.is_main:
        layout = ctx.model.layout
        tensors = {k: v.detach().to("cpu") for k, v in model.state_dict().items() if k in layout}
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
