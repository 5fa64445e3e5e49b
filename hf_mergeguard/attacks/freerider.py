"""A stand-in free-rider for when the user has none: a short fine-tune of the base on a synthetic skill.

``check`` without ``--merge-with`` fine-tunes the base for a few steps on digit sorting (``sort 5381`` ->
``#### 1358``, the toy world's data generator, tokenized with the model's own tokenizer), and writes an
lm-eval task for that skill so the self-test can see whether a merge keeps the free-rider's skill too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..sources import StateDictSource, TensorSource
from ..toyworld.build import _task_yaml, _write_jsonl
from ..toyworld.skills import make_split
from ..training import Example, TrainingConfig, train_causal_lm

SYNTHETIC_SKILL = "sort"


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
) -> SyntheticFreeRider:
    """Fine-tune ``base`` on synthetic digit sorting; returns the model and its lm-eval task."""
    work_dir = Path(work_dir)
    train, test = make_split(SYNTHETIC_SKILL, 4000, 200, seed + 1000)
    task = f"mg_freerider_{SYNTHETIC_SKILL}"
    _write_jsonl(work_dir / "data" / "train.jsonl", train)
    _write_jsonl(work_dir / "data" / "test.jsonl", test)
    tasks = work_dir / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / f"{task}.yaml").write_text(_task_yaml(task, (work_dir / "data" / "train.jsonl").resolve(), (work_dir / "data" / "test.jsonl").resolve()))
    model = base.load_model(device=device)
    count = sum(p.numel() for p in model.parameters())
    training = training or default_freerider_training(count)
    training.seed = seed
    result = train_causal_lm(model, tokenizer, [Example(r["prompt"], r["completion"]) for r in train], training, desc="synthetic free-rider", progress=progress)
    from ..checkpoint import model_state_dict

    tensors = {k: v.detach().to("cpu").clone() for k, v in model_state_dict(model).items()}
    info = {"skill": SYNTHETIC_SKILL, **training.to_dict(), "final_loss": result.losses[-1]}
    (work_dir / "freerider.json").write_text(json.dumps(info, indent=2))
    return SyntheticFreeRider(StateDictSource(tensors, base.config, source=f"synthetic free-rider ({SYNTHETIC_SKILL})"), task, tasks, info)
