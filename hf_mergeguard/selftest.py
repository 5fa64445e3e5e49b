"""The self-test matrix: do to a model what a free-rider would do, and measure what survives.

For the original fine-tune theta_def (when known), the protected theta_hat_def, every merge method x its
coefficient grid x every free-rider, the merged model is built with mergekit's math and scored with
lm-eval on the defender's tasks and the free-rider's tasks. The result (``selftest.json``) holds every
score, the attacker's best merge per method, the base model's score as the floor, and two gates:

* standalone drop: the protected model loses at most ``max_standalone_drop`` points on its own tasks;
* merged retention: the attacker's best merge keeps at most ``max_merged_retention`` of the defender's
  skill gain over the base (gain measured on the original fine-tune).

The attacker's best merge for a method is the grid point that keeps the most of the defender's skill
among those that also keep at least ``freerider_floor`` of the free-rider's own gain (a merge that wrecks
the free-rider's skill is no free ride); the best over all grid points is reported too.

The jobs are independent: under accelerate they are split across processes (``split_between_processes``
+ ``gather_object``), so N GPUs score N models at once.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .attacks.merges import MergeMethod, merge_state_dict, parse_methods
from .checkpoint import model_from_state_dict, write_text_atomically
from .errors import ConfigError
from .sources import TensorSource, materialize

log = logging.getLogger(__name__)

SELFTEST_FILE = "selftest.json"
SCHEMA_VERSION = 1


@dataclass
class FreeRider:
    """A model a free-rider would merge with the defender, and the tasks that measure its own skill."""

    model: TensorSource
    tasks: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        self.name = self.name or self.model.source


@dataclass
class SelfTestOptions:
    """How a model is self-tested (each a CLI / YAML option of ``check`` and ``protect``'s ``selftest:``)."""

    methods: list[str] | None = None
    thorough: bool = False
    limit: int | None = None
    batch_size: int = 32
    max_standalone_drop: float = 1.5
    max_merged_retention: float = 0.25
    freerider_floor: float = 0.5
    allow_code_eval: bool = False
    code_timeout: float = 3600.0  # seconds the child that runs model-written code may take
    # Adaptive attacks (attacks/adaptive.py): on in protect, off in check.
    adaptive: bool = False
    attacks: list[str] | None = None
    attack_examples: int = 64
    attack_steps: int = 30
    attack_learning_rate: float = 3e-4

    def __post_init__(self):
        if not 0 <= self.freerider_floor <= 1:
            raise ConfigError("--freerider-floor must be between 0 and 1.")
        parse_methods(self.methods)  # typos fail here, before any work
        from .attacks.adaptive import parse_attacks

        parse_attacks(self.attacks)
        if self.attack_examples < 1 or self.attack_steps < 1:
            raise ConfigError("--attack-examples and --attack-steps must be at least 1.")


@dataclass
class SelfTestConfig(SelfTestOptions):
    """The options plus what a run is about: the defender's tasks, extra task folders, the seed."""

    tasks: list[str] = field(default_factory=list)
    include_tasks: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self):
        if not self.tasks:
            raise ConfigError("The self-test needs the defender's tasks (--tasks).")
        super().__post_init__()

    def merge_methods(self) -> list[MergeMethod]:
        return parse_methods(self.methods)


@dataclass(frozen=True)
class Job:
    """One model to score: a standalone model, or a merge (variant x method x value x free-rider)."""

    model: str  # "base", "original", "protected", "freerider<i>", or the merged defender variant
    method: str | None = None
    value: float | None = None
    freerider: int | None = None

    @property
    def is_merge(self) -> bool:
        return self.method is not None


def plan_jobs(config: SelfTestConfig, n_freeriders: int, with_original: bool) -> list[Job]:
    variants = (["original"] if with_original else []) + ["protected"]
    jobs = [Job("base")] + [Job(v) for v in variants] + [Job(f"freerider{i}") for i in range(n_freeriders)]
    for variant in variants:
        for method in config.merge_methods():
            for index in range(n_freeriders):
                for value in method.values(config.thorough):
                    jobs.append(Job(variant, method.name, value, index))
    return jobs


def run_jobs(jobs: Sequence[Any], worker: Callable[[Any], Any], *, accelerator=None, desc: str = "self-test", progress: bool = True) -> list[Any]:
    """Run independent jobs, split across accelerate processes when there are several; results in job order."""
    from tqdm.auto import tqdm

    if accelerator is None or accelerator.num_processes == 1:
        return [worker(job) for job in tqdm(jobs, desc=desc, disable=not progress, leave=False)]
    from accelerate.utils import gather_object

    with accelerator.split_between_processes(list(jobs)) as mine:
        results = [worker(job) for job in tqdm(mine, desc=f"{desc} [rank {accelerator.process_index}]", disable=not progress, leave=False)]
    return gather_object(results)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _gain_share(score: float, floor: float, reference: float) -> float | None:
    gain = reference - floor
    if gain <= 1e-9:
        return None
    return (score - floor) / gain


def run_selftest(
    *,
    base: TensorSource,
    protected: TensorSource,
    tokenizer,
    config: SelfTestConfig,
    freeriders: Sequence[FreeRider],
    original: TensorSource | None = None,
    accelerator=None,
    device: str = "cpu",
    progress: bool = True,
    extra: dict | None = None,
    score_cache: str | Path | None = None,
) -> dict:
    """Run the matrix and return the ``selftest.json`` report (see the module docstring).

    Args:
        base: the public base model both fine-tunes come from.
        protected: the model about to be released (for ``check``: the model as it is).
        tokenizer: the defender's tokenizer.
        config: tasks, methods, thresholds.
        freeriders: the models merged with it, with their own tasks.
        original: the unprotected fine-tune, when known (``protect``): merges of it are the reference.
        accelerator: split jobs across its processes.
        extra: more fields for the report (the defense's public parameters, sources...).
        score_cache: a folder keeping the scores of jobs that do not involve ``protected`` (the base, the
            original, the free-riders and the original's merges), keyed by the files' fingerprints, so trying
            several protections of one model scores those once.
    """
    from .evaluation import Evaluator

    if not freeriders:
        raise ConfigError("The self-test needs at least one model to merge with (--merge-with).")
    fr_tasks = sorted({t for fr in freeriders for t in fr.tasks} - set(config.tasks))
    evaluator = Evaluator(
        list(config.tasks) + fr_tasks,
        include_tasks=config.include_tasks,
        limit=config.limit,
        batch_size=config.batch_size,
        allow_code_eval=config.allow_code_eval,
        code_timeout=config.code_timeout,
    )
    # Small models are read once and merged from memory; large ones stream from disk per merge.
    sources = {"base": base, "protected": protected}
    if original is not None:
        sources["original"] = original
    for index, rider in enumerate(freeriders):
        sources[f"freerider{index}"] = rider.model
    fingerprints = {k: source_fingerprint(v) for k, v in sources.items()}
    sources = {k: materialize(v) if _small(v) else v for k, v in sources.items()}
    model_config = protected.config
    methods = {m.name: m for m in config.merge_methods()}
    jobs = plan_jobs(config, len(freeriders), original is not None)

    def score(job: Job) -> dict:
        if job.is_merge:
            tensors = merge_state_dict(
                methods[job.method],
                job.value,
                base=sources["base"],
                defender=sources[job.model],
                freeriders=[sources[f"freerider{job.freerider}"]],
                seed=config.seed,
            )
            model = model_from_state_dict(model_config, tensors, device=device)
        else:
            model = sources[job.model].load_model(device=device)
        scores = evaluator.evaluate(model, tokenizer)
        return {"job": asdict(job), "scores": {t: s.value for t, s in scores.items()}, "metrics": {t: s.metric for t, s in scores.items()}}

    def job_key(job: Job) -> str | None:
        involved = [job.model] + ([f"freerider{job.freerider}"] if job.is_merge else []) + (["base"] if job.is_merge else [])
        if score_cache is None or "protected" in involved or any(fingerprints[name] is None for name in involved):
            return None
        return config_digest({
            "tool": __version__, "job": asdict(job), "models": {name: fingerprints[name] for name in involved},
            "tasks": evaluator.tasks, "include_tasks": [str(Path(p).resolve()) for p in config.include_tasks],
            "limit": config.limit, "seed": config.seed,
        })

    def cached_score(job: Job) -> dict:
        key = job_key(job)
        path = Path(score_cache) / f"{key}.json" if key else None
        if path is not None and path.is_file():
            return json.loads(path.read_text())
        result = score(job)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(path, json.dumps(result))
        return result

    results = run_jobs(jobs, cached_score, accelerator=accelerator, progress=progress)
    report = analyse(results, config, freeriders, with_original=original is not None)
    report["sources"] = {
        "base": base.source,
        "protected": protected.source,
        "original": original.source if original is not None else None,
        "freeriders": [{"model": fr.name, "tasks": fr.tasks} for fr in freeriders],
    }
    report.update(extra or {})
    return report


def source_fingerprint(source: TensorSource) -> str | None:
    """Identity of a checkpoint on disk (weight files' paths, sizes and modification times); None otherwise."""
    files = getattr(source, "weight_files", None)
    if not files:
        return None
    stats = [(str(Path(f).resolve()), Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files]
    return config_digest(stats)


def _small(source: TensorSource, limit_bytes: int = 4 * 1024**3) -> bool:
    return sum(spec.nbytes for spec in source.layout.values()) <= limit_bytes


def analyse(results: list[dict], config: SelfTestConfig, freeriders: Sequence[FreeRider], *, with_original: bool) -> dict:
    """Turn raw job scores into the report: floors, attacker's best per method, retention, gates."""
    standalone = {r["job"]["model"]: r["scores"] for r in results if r["job"]["method"] is None}
    merges = [r for r in results if r["job"]["method"] is not None]
    metrics = next(iter(results))["metrics"]
    def_tasks = list(config.tasks)

    def defender_score(scores: dict) -> float:
        return _mean([scores[t] for t in def_tasks])

    def rider_share(scores: dict, index: int) -> float | None:
        tasks = freeriders[index].tasks
        if not tasks:
            return None
        rider = _mean([standalone[f"freerider{index}"][t] for t in tasks])
        floor = _mean([standalone["base"][t] for t in tasks])
        return _gain_share(_mean([scores[t] for t in tasks]), floor, rider)

    reference = "original" if with_original else "protected"
    floor = defender_score(standalone["base"])
    ref_score = defender_score(standalone[reference])
    entries = []
    for r in merges:
        job = r["job"]
        share = rider_share(r["scores"], job["freerider"])
        entries.append(
            {
                "variant": job["model"],
                "method": job["method"],
                "value": job["value"],
                "freerider": job["freerider"],
                "scores": r["scores"],
                "defender_score": defender_score(r["scores"]),
                "freerider_kept": share,
                "defender_kept": _gain_share(defender_score(r["scores"]), floor, ref_score),
            }
        )

    def best(variant: str, method: str) -> dict:
        pool = [e for e in entries if e["variant"] == variant and e["method"] == method]
        fair = [e for e in pool if e["freerider_kept"] is None or e["freerider_kept"] >= config.freerider_floor - 1e-9]
        chosen = max(fair or pool, key=lambda e: e["defender_score"])
        overall = max(pool, key=lambda e: e["defender_score"])
        return {
            "value": chosen["value"],
            "freerider": chosen["freerider"],
            "scores": chosen["scores"],
            "defender_score": chosen["defender_score"],
            "defender_kept": chosen["defender_kept"],
            "freerider_kept": chosen["freerider_kept"],
            "freerider_constraint_met": bool(fair),
            "best_any_value": overall["value"],
            "best_any_defender_score": overall["defender_score"],
        }

    variants = (["original"] if with_original else []) + ["protected"]
    best_by_method = {
        m.name: {v: best(v, m.name) for v in variants} for m in config.merge_methods()
    }
    kept = [b["protected"]["defender_kept"] for b in best_by_method.values() if b["protected"]["defender_kept"] is not None]
    worst_retention = max(kept) if kept else None
    gates = {}
    if with_original:
        drops = {t: 100 * (standalone["original"][t] - standalone["protected"][t]) for t in def_tasks}
        drop = max(drops.values())
        gates["standalone_drop"] = {
            "value": drop,
            "per_task": drops,
            "threshold": config.max_standalone_drop,
            "unit": "points",
            "passed": drop <= config.max_standalone_drop + 1e-9,
        }
    gates["merged_retention"] = {
        "value": worst_retention,
        "worst_method": max(best_by_method, key=lambda m: best_by_method[m]["protected"]["defender_kept"] or -math.inf),
        "threshold": config.max_merged_retention,
        "unit": "share of the defender's skill gain over the base",
        "passed": worst_retention is not None and worst_retention <= config.max_merged_retention + 1e-9,
    }
    if ref_score - floor <= 1e-9:
        gates["merged_retention"]["passed"] = False
        gates["merged_retention"]["note"] = "the model is not better than the base on its tasks: nothing to protect"
    return {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(config),
        "tasks": def_tasks,
        "metrics": metrics,
        "standalone": standalone,
        "floor": {"defender_score": floor, "scores": standalone["base"]},
        "merges": entries,
        "best": best_by_method,
        "gates": gates,
        "passed": all(g["passed"] for g in gates.values()),
    }


def write_report(report: dict, folder: str | Path) -> Path:
    path = Path(folder) / SELFTEST_FILE
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path


def config_digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
