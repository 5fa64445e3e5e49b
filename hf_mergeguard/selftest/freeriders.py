"""The models a free-rider would merge with the defender: the ``--merge-with`` models, or a synthetic one.

``check`` without ``--merge-with`` fine-tunes the base for a few steps on digit sorting (``sort 5381`` ->
``#### 1358``, the toy world's data generator, tokenized with the model's own tokenizer), and writes an
lm-eval task for that skill so the self-test can see whether a merge keeps the free-rider's skill too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError
from ..evaluation import Evaluator
from ..io.checkpoint import Checkpoint
from ..io.checks import check_compatible
from ..io.hf_models import model_state_dict
from ..io.sources import StateDictSource, TensorSource
from ..io.vocabulary import align_vocabulary
from ..toyworld.skills import make_split
from ..toyworld.tasks import task_yaml, write_jsonl
from ..training import Example, TrainingConfig, train_causal_lm

log = logging.getLogger(__name__)

SYNTHETIC_SKILL = "sort"


@dataclass
class FreeRider:
    """A model a free-rider would merge with the defender, and the tasks that measure its own skill."""

    model: TensorSource
    tasks: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        self.name = self.name or self.model.source


def open_freeriders(base: Checkpoint, merge_with: Sequence[str], freerider_tasks: Sequence[str], *, token=None) -> list[FreeRider]:
    """Open each ``--merge-with`` model, check it shares ``base`` (structure; the values are checked with the other
    inputs), and pair it with its tasks."""
    if freerider_tasks and len(freerider_tasks) not in (1, len(merge_with)):
        raise ConfigError(
            f"{len(freerider_tasks)} --freerider-tasks for {len(merge_with)} --merge-with models.",
            "Give one --freerider-tasks per --merge-with (in the same order), or one for all.",
        )
    riders = []
    defender = getattr(base, "reference", None)  # the fine-tune whose vocabulary the run uses (it added tokens)
    for index, path in enumerate(merge_with):
        checkpoint = Checkpoint.open(path, token=token)
        if defender is not None:
            checkpoint = align_vocabulary(checkpoint, defender, role="--merge-with model", defender_added_tokens=True)
        check_compatible(checkpoint, base, merge_partner=True)
        tasks = freerider_tasks[index if len(freerider_tasks) > 1 else 0] if freerider_tasks else ""
        riders.append(FreeRider(checkpoint, [t for t in tasks.split(",") if t]))
    return riders


def selftest_evaluator(
    tasks: Sequence[str],
    include_tasks: Sequence[str],
    freeriders: Sequence[FreeRider],
    config,
    *,
    chat_template: bool = False,
    task_data: Sequence[str] = (),
) -> Evaluator:
    """One evaluator for the whole self-test: the defender's tasks, then the free-riders' own (``chat_template``: the
    resolved ``--chat-template``; ``task_data``: ``--task-data``'s ``TASK=PATH`` entries)."""
    rider_tasks = sorted({t for fr in freeriders for t in fr.tasks} - set(tasks))
    return Evaluator(
        list(tasks) + rider_tasks,
        include_tasks=include_tasks,
        task_data=task_data,
        limit=config.limit,
        batch_size=config.batch_size,
        allow_code_eval=config.allow_code_eval,
        code_timeout=config.code_timeout,
        chat_template=chat_template,
        eval_backend=config.eval_backend,
    )


@dataclass
class SyntheticFreeRider:
    model: StateDictSource
    task: str
    task_folder: Path
    training: dict


def default_freerider_training(num_parameters: int) -> TrainingConfig:
    """Gentle settings: the toy world's fine-tune recipe for tiny models, a small lr for real LLMs."""
    if num_parameters < 50_000_000:
        return TrainingConfig(steps=300, learning_rate=3e-4, batch_size=32, warmup_steps=10, max_length=64)
    return TrainingConfig(steps=100, learning_rate=2e-5, batch_size=16, warmup_steps=10, max_length=64)


def synthetic_freerider(
    base: TensorSource,
    tokenizer,
    work_dir: str | Path,
    *,
    training: TrainingConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    accelerator=None,
) -> SyntheticFreeRider:
    """Fine-tune ``base`` on synthetic digit sorting (data-parallel over the run's ``accelerator``); returns the model
    and its lm-eval task."""
    work_dir = Path(work_dir)
    train, test = make_split(SYNTHETIC_SKILL, 4000, 200, seed + 1000)
    task = f"mg_freerider_{SYNTHETIC_SKILL}"
    write_jsonl(work_dir / "data" / "train.jsonl", train)
    write_jsonl(work_dir / "data" / "test.jsonl", test)
    tasks = work_dir / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / f"{task}.yaml").write_text(
        task_yaml(task, (work_dir / "data" / "train.jsonl").resolve(), (work_dir / "data" / "test.jsonl").resolve())
    )
    # float32 master weights: bf16 AdamW at 2e-5 leaves most bf16 weights unchanged (a barely trained stand-in).
    model = base.load_model(dtype=torch.float32, device=device)
    count = sum(p.numel() for p in model.parameters())
    training = training or default_freerider_training(count)
    training.seed = seed
    log.info(
        "No --merge-with: the free-rider is synthetic, the base fine-tuned on digit sorting (%d rows, %d steps at lr %g) "
        "and scored on its own task %s. Pass --merge-with MODEL --freerider-tasks TASK to merge with a real fine-tune.",
        len(train),
        training.steps,
        training.learning_rate,
        task,
    )
    result = train_causal_lm(
        model,
        tokenizer,
        [Example(r["prompt"], r["completion"]) for r in train],
        training,
        accelerator=accelerator,
        desc="synthetic free-rider",
        progress=progress,
    )
    layout = base.layout  # stored back in the base's dtypes
    tensors = {k: v.detach().to("cpu", layout[k].dtype if k in layout else v.dtype).clone() for k, v in model_state_dict(model).items()}
    info = {"skill": SYNTHETIC_SKILL, **training.to_dict(), "final_loss": result.losses[-1]}
    (work_dir / "freerider.json").write_text(json.dumps(info, indent=2))
    return SyntheticFreeRider(StateDictSource(tensors, base.config, source=f"synthetic free-rider ({SYNTHETIC_SKILL})"), task, tasks, info)
