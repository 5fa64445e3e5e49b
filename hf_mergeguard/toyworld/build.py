"""Build the toy world: a tiny Llama base pretrained on a mixture of synthetic skills, one fine-tune per
skill, the data as JSONL, and one lm-eval task YAML per skill. Offline and deterministic for a seed.

The world is cached by a digest of its config (``$HF_MERGEGUARD_CACHE`` or ``~/.cache/hf_mergeguard``), so
tests and demos build it once; :func:`build_toy_world` then copies it where asked and writes task YAMLs
that point at the copied data by absolute path. It is trained with pinned CPU numerics, in a child process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..digests import config_digest
from ..environment import reproducible_cpu_env
from ..errors import MergeGuardError
from ..io.atomic import atomic_output_dir, write_text_atomically
from ..io.checkpoint import Checkpoint
from ..io.hf_models import save_model
from ..io.writer import stamp_metadata
from ..paths import toyworld_dir
from ..training import Example, RunConfig, TrainingConfig, make_accelerator, train_causal_lm
from .scoring import exact_match
from .skills import CHARACTERS, SPECIAL_TOKENS, make_split, make_tokenizer
from .tasks import write_jsonl, write_task_yamls

# Bump when the recipe changes in a way the config fields do not capture (invalidates caches).
RECIPE_VERSION = 4


@dataclass(frozen=True)
class ToyWorldConfig:
    """Everything that determines the toy world (its digest keys the cache).

    The base is pretrained on the *base form* of every skill (shorter inputs); each fine-tune learns the
    *full form* of its skill (longer inputs), with ``finetune_replay`` of its batches drawn from the base
    mixture so that it keeps the other skills. Tests measure the full forms. These settings were measured to
    make merges work (see ``tests/test_toyworld.py::test_merge_precondition``).
    """

    skills: tuple[str, ...] = ("sort", "count", "rev")
    pretrain_skills: tuple[str, ...] = ()
    seed: int = 0
    train_size: int = 6000
    test_size: int = 300
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 64
    base_steps: int = 420
    base_lr: float = 3e-3
    base_batch: int = 128
    base_warmup: int = 50
    finetune_steps: int = 200
    finetune_lr: float = 2e-4
    finetune_batch: int = 32
    finetune_warmup: int = 20
    finetune_replay: float = 0.3
    bf16: bool = False  # train in bf16 mixed precision (the GPU check's larger world)
    prompt_style: str = "plain"  # how prompts read (toyworld.skills.PROMPT_STYLES)
    stand_in: str = "copy"  # a skill no model of the world learns: the merge trap's stand-in free-rider data

    def digest(self) -> str:
        recipe = asdict(self)
        # Options at their first value are left out: the first world keeps the digest (and cache) it had before them.
        for option, first in (("bf16", False), ("prompt_style", "plain"), ("stand_in", "copy")):
            if recipe[option] == first:
                del recipe[option]
        return config_digest({**recipe, "recipe": RECIPE_VERSION})


# The second world: other skills in another prompt format, with its own stand-in. The merge trap's defaults were not
# tuned on it; benchmarks/trap_family.py --world second reports the figures measured on it apart from the first
# world's (defender dup, free-rider maxd: their unprotected task-arithmetic merge keeps 0.97 and 1.00 of the two gains
# on 100 prompts, while dup with shift keeps neither at lambda 1; benchmarks/world_pairs.py). Its skills are harder for
# the tiny model than the first world's: a longer pretraining and fine-tunes.
SECOND_WORLD = ToyWorldConfig(
    skills=("maxd", "dup", "shift"), prompt_style="question", stand_in="alt", base_steps=800, finetune_steps=300, finetune_lr=3e-4
)


@dataclass
class ToyWorld:
    """Paths of a built toy world (the layout other tools rely on)."""

    root: Path
    config: ToyWorldConfig
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def base(self) -> Path:
        return self.models / "base"

    def model(self, skill: str) -> Path:
        return self.models / skill

    def data(self, skill: str, split: str = "test") -> Path:
        return self.root / "data" / skill / f"{split}.jsonl"

    @property
    def tasks(self) -> Path:
        return self.root / "tasks"

    def task_name(self, skill: str) -> str:
        return f"toy_{skill}"

    def stand_in_data(self, folder: Path | None = None) -> Path:
        """Training rows of the world's ``stand_in`` skill (``copy`` in the first world), one no model of the world was
        trained on: what a defender who does not know the free-riders' data can fine-tune a stand-in free-rider on
        (the merge trap's ``rider_data``). Written on first use into the world, or into ``folder`` when given and
        the world does not have them (``protect`` never writes into its inputs)."""
        path = self.data(self.config.stand_in, "train")
        if path.is_file():
            return path
        if folder is not None:
            path = Path(folder) / f"stand-in-{self.config.stand_in}.jsonl"
        if not path.is_file():
            train, _ = make_split(self.config.stand_in, self.config.train_size, 10, self.config.seed, style=self.config.prompt_style)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in train))
        return path

    def rows(self, skill: str, split: str = "test") -> list[dict]:
        return [json.loads(line) for line in self.data(skill, split).read_text().splitlines() if line]


def world_of(model_path: str | os.PathLike) -> ToyWorld | None:
    """The toy world a model folder belongs to (``WORLD/models/NAME`` beside ``WORLD/world.json``), else None."""
    path = Path(model_path)
    record = path.parent.parent / "world.json"
    if path.parent.name != "models" or not record.is_file():
        return None
    try:
        options = json.loads(record.read_text())["config"]
        config = ToyWorldConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in options.items()})
    except (ValueError, KeyError, TypeError):
        return None
    return ToyWorld(path.parent.parent, config)


def _llama_config(config: ToyWorldConfig, vocab_size: int) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "max_position_embeddings": config.max_positions,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _examples(rows: list[dict]) -> list[Example]:
    return [Example(row["prompt"], row["completion"]) for row in rows]


def _with_replay(examples: list[Example], base_rows: dict[str, list[Example]], skill: str, config: ToyWorldConfig) -> list[Example]:
    """Fine-tune data plus ``finetune_replay`` of base-mixture rows of the other skills (shuffled, seeded)."""
    if not config.finetune_replay:
        return examples
    pool = [row for other, rows in base_rows.items() if other != skill for row in rows]
    random.Random(f"{config.seed}-replay-{skill}").shuffle(pool)
    count = int(len(examples) * config.finetune_replay / (1 - config.finetune_replay))
    return examples + pool[:count]


def _train_world(config: ToyWorldConfig, folder: Path, progress: bool) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(config.seed)
    tokenizer = make_tokenizer()
    style = config.prompt_style
    splits = {skill: make_split(skill, config.train_size, config.test_size, config.seed, style=style) for skill in config.skills}
    for skill, (train, test) in splits.items():
        write_jsonl(folder / "data" / skill / "train.jsonl", train)
        write_jsonl(folder / "data" / skill / "test.jsonl", test)
    # The base sees every skill in its base form (plus skills only it learns).
    base_rows = {
        skill: _examples(make_split(skill, config.train_size, config.test_size, config.seed, base_form=True, style=style)[0])
        for skill in (*config.skills, *config.pretrain_skills)
    }
    mixture = [example for rows in base_rows.values() for example in rows]
    model_config = _llama_config(config, len(SPECIAL_TOKENS) + len(CHARACTERS))
    hf_config = AutoConfig.for_model(**model_config)
    model = AutoModelForCausalLM.from_config(hf_config)
    accelerator = make_accelerator(RunConfig(bf16=True)) if config.bf16 else None
    timings = {}
    start = time.perf_counter()
    train_causal_lm(
        model,
        tokenizer,
        mixture,
        TrainingConfig(
            steps=config.base_steps,
            learning_rate=config.base_lr,
            batch_size=config.base_batch,
            warmup_steps=config.base_warmup,
            schedule="cosine",
            max_length=config.max_positions,
            seed=config.seed,
        ),
        desc="toy world: base",
        progress=progress,
        accelerator=accelerator,
    )
    timings["base"] = time.perf_counter() - start
    metadata = stamp_metadata(method="toyworld", config_digest=config.digest())
    save_model(model, folder / "models" / "base", tokenizer=tokenizer, metadata=metadata)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    for index, skill in enumerate(config.skills):
        model.load_state_dict(base_state)
        start = time.perf_counter()
        train_causal_lm(
            model,
            tokenizer,
            _with_replay(_examples(splits[skill][0]), base_rows, skill, config),
            TrainingConfig(
                steps=config.finetune_steps,
                learning_rate=config.finetune_lr,
                batch_size=config.finetune_batch,
                warmup_steps=config.finetune_warmup,
                max_length=config.max_positions,
                seed=config.seed + 1 + index,
            ),
            desc=f"toy world: {skill} fine-tune",
            progress=progress,
            accelerator=accelerator,
        )
        timings[skill] = time.perf_counter() - start
        save_model(model, folder / "models" / skill, tokenizer=tokenizer, metadata=metadata)
    return timings


def score_world(world: ToyWorld) -> dict[str, dict[str, float]]:
    """Exact-match accuracy of every model of the world on every skill's test set."""
    tokenizer = make_tokenizer()
    scores = {}
    for name in ["base", *world.config.skills]:
        model = Checkpoint(world.models / name).load_model()
        scores[name] = {skill: exact_match(model, tokenizer, world.rows(skill)) for skill in world.config.skills}
    return scores


def build_toy_world(
    out: str | os.PathLike | None = None,
    config: ToyWorldConfig | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ToyWorld:
    """Build (or reuse from the cache) the toy world and return its paths.

    The world is trained in a child process whose CPU numerics are pinned (see
    :func:`~hf_mergeguard.environment.reproducible_cpu_env`), so that every machine builds the same world.

    Args:
        out: where to put the world (``out/models``, ``out/data``, ``out/tasks``); default: the cache
            folder itself.
        config: the world's recipe; default :class:`ToyWorldConfig()`.
        cache_dir: cache root; default ``$HF_MERGEGUARD_CACHE`` or ``~/.cache/hf_mergeguard``.
        overwrite: replace an existing ``out``.
    """
    config = config or ToyWorldConfig()
    cached = (Path(cache_dir) / "toyworld" if cache_dir else toyworld_dir()) / config.digest()
    if not (cached / "world.json").is_file():
        command = [
            sys.executable,
            "-c",
            "from hf_mergeguard.toyworld.build import _child; _child()",
            json.dumps(asdict(config)),
            str(cached),
        ]
        completed = subprocess.run(command + (["--progress"] if progress else []), env=reproducible_cpu_env())
        if completed.returncode != 0:
            raise MergeGuardError(
                f"Building the toy world failed in its child process (exit code {completed.returncode}).",
                "Its error is printed above; rerun with --debug for more.",
            )
    if out is None:
        world = ToyWorld(cached, config)
    else:
        with atomic_output_dir(out, overwrite=overwrite) as folder:
            for part in ("models", "data", "world.json"):
                source = cached / part
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / part)
        world = ToyWorld(Path(out).resolve(), config)
    write_task_yamls(world)
    world.scores = json.loads((world.root / "world.json").read_text())["scores"]
    return world


def _train_and_score(config: ToyWorldConfig, cached: Path, progress: bool) -> None:
    """Train every model of the world and score them into ``cached`` (atomically; run in the child process)."""
    with atomic_output_dir(cached, overwrite=True) as folder:
        timings = _train_world(config, folder, progress)
        scores = score_world(ToyWorld(folder, config))
        record = {"config": asdict(config), "digest": config.digest(), "scores": scores, "train_seconds": timings}
        (folder / "world.json").write_text(json.dumps(record, indent=2) + "\n")


def _child() -> None:
    """The child process of :func:`build_toy_world`: ``CONFIG_JSON FOLDER [--progress]``."""
    options = {key: tuple(value) if isinstance(value, list) else value for key, value in json.loads(sys.argv[1]).items()}
    _train_and_score(ToyWorldConfig(**options), Path(sys.argv[2]), progress="--progress" in sys.argv[3:])
