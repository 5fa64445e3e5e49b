"""The self-test matrix: every merge method x its coefficient grid x every free-rider, scored with lm-eval.

For the original fine-tune theta_def (when known), the protected theta_hat_def, every merge method x its coefficient
grid x every free-rider, the merged model is built with mergekit's math and scored with lm-eval on the defender's
tasks and the free-rider's tasks. The report holds every score, the attacker's best merge per method (see
:mod:`hf_mergeguard.report.scoring`), the base model's score as the floor, and two gates:

* standalone drop: the protected model loses at most ``max_standalone_drop`` points on its own tasks;
* merged retention: the attacker's best merge keeps at most ``max_merged_retention`` of the defender's skill gain
  over the base (gain measured on the original fine-tune).

The jobs are independent: under accelerate they are split across processes (:func:`~hf_mergeguard.distributed.run_jobs`),
so N GPUs score N models at once.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..attacks.merges import merge_state_dict
from ..digests import config_digest, source_fingerprint
from ..distributed import run_jobs
from ..errors import ConfigError
from ..evaluation.local_data import task_data_identity
from ..io.atomic import write_text_atomically
from ..io.hf_models import model_from_state_dict
from ..io.sources import TensorSource, materialize
from ..report.schema import (
    SCHEMA_VERSION,
    BestMerge,
    Floor,
    FreeRiderSource,
    Gate,
    MergeResult,
    SelfTestReport,
    Sources,
)
from ..report.scoring import TOLERANCE, Shares, attacker_best, free_ride, gain_share
from .config import SelfTestConfig
from .freeriders import FreeRider
from .racing import race, race_parts

# Bumped when how a score is computed changes (2: --limit's seeded subset and the degenerate probe), so a cache of
# scores computed the old way is not mixed with new ones.
SCORING_VERSION = 2

RETENTION_UNIT = "share of the defender's skill gain over the base"


@dataclass(frozen=True)
class Job:
    """One model to score: a standalone model, or a merge (variant x method x value x free-rider)."""

    model: str  # "base", "original", "protected", "freerider<i>", or the merged defender variant
    method: str | None = None
    value: float | None = None
    freerider: int | None = None
    # Besides the main coefficient (--thorough): asymmetric weights, lambda or another seed, as (name, value) pairs.
    extra: tuple[tuple[str, float], ...] = ()

    @property
    def is_merge(self) -> bool:
        return self.method is not None

    @property
    def models(self) -> list[str]:
        """The models the job reads."""
        return [self.model] + ([f"freerider{self.freerider}", "base"] if self.is_merge else [])


def plan_jobs(config: SelfTestConfig, n_freeriders: int, with_original: bool) -> list[Job]:
    variants = (["original"] if with_original else []) + ["protected"]
    jobs = [Job("base")] + [Job(v) for v in variants] + [Job(f"freerider{i}") for i in range(n_freeriders)]
    for variant in variants:
        for method in config.merge_methods():
            for index in range(n_freeriders):
                for value in method.values(config.thorough):
                    for extra in method.extras(config.thorough):
                        jobs.append(Job(variant, method.name, value, index, tuple(sorted(extra.items()))))
    return jobs


class ScoreCache:
    """Scores of every job whose models are files on disk, kept in a folder as each job finishes and keyed by the
    files' fingerprints (path, size, modification time): trying several protections of one model scores the base,
    the original, the free-riders and the original's merges once, and a killed run resumes from its last scored job
    (the protected model's too: a rewritten checkpoint has another fingerprint). Models held only in memory (a
    re-aligned model) are not cached."""

    def __init__(self, folder: str | Path | None, fingerprints: dict[str, str | None], identity: dict):
        self.folder = Path(folder) if folder is not None else None
        self.fingerprints = fingerprints
        self.identity = identity  # what else a score depends on: tasks, task folders, limit, seed

    def path(self, job: Job, part: dict | None = None) -> Path | None:
        involved = job.models
        if self.folder is None or any(self.fingerprints[name] is None for name in involved):
            return None
        key = {"tool": __version__, "job": asdict(job), "models": {name: self.fingerprints[name] for name in involved}, **self.identity}
        if part is not None:  # a race's part of the prompts
            key["part"] = part
        return self.folder / f"{config_digest(key)}.json"

    def score(self, job: Job, score, part: dict | None = None) -> dict:
        path = self.path(job, part)
        if path is not None and path.is_file():
            return json.loads(path.read_text())
        result = score(job)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(path, json.dumps(result))
        return result


def _small(source: TensorSource, limit_bytes: int = 4 * 1024**3) -> bool:
    return sum(spec.nbytes for spec in source.layout.values()) <= limit_bytes


def run_selftest(
    *,
    base: TensorSource,
    protected: TensorSource,
    tokenizer,
    evaluator,
    tasks: Sequence[str],
    config: SelfTestConfig,
    freeriders: Sequence[FreeRider],
    original: TensorSource | None = None,
    seed: int = 0,
    accelerator=None,
    device: str = "cpu",
    progress: bool = True,
    score_cache: str | Path | None = None,
) -> SelfTestReport:
    """Run the matrix and return its report (see the module docstring).

    Args:
        base: the public base model both fine-tunes come from.
        protected: the model about to be released (for ``check``: the model as it is).
        tokenizer: the defender's tokenizer.
        evaluator: scores the defender's tasks and the free-riders' (see :func:`~.freeriders.selftest_evaluator`).
        tasks: the defender's tasks.
        config: methods, thresholds.
        freeriders: the models merged with it, with their own tasks.
        original: the unprotected fine-tune, when known (``protect``): merges of it are the reference.
        seed: seed of random merge methods (DARE, DELLA).
        accelerator: split jobs across its processes.
        score_cache: a folder for :class:`ScoreCache`.
    """
    if not freeriders:
        raise ConfigError("The self-test needs at least one model to merge with (--merge-with).")
    if not tasks:
        raise ConfigError("The self-test needs the defender's tasks (--tasks).")
    # Small models are read once and merged from memory; large ones stream from disk per merge.
    sources = {"base": base, "protected": protected}
    if original is not None:
        sources["original"] = original
    for index, rider in enumerate(freeriders):
        sources[f"freerider{index}"] = rider.model
    fingerprints = {name: source_fingerprint(source) for name, source in sources.items()}
    sources = {name: materialize(source) if _small(source) else source for name, source in sources.items()}
    methods = {m.name: m for m in config.merge_methods()}

    def build(job: Job):
        if job.is_merge:
            tensors = merge_state_dict(
                methods[job.method],
                job.value,
                base=sources["base"],
                defender=sources[job.model],
                freeriders=[sources[f"freerider{job.freerider}"]],
                seed=seed,
                device=device,
                extra=dict(job.extra),
            )
            model = model_from_state_dict(protected.config, tensors, device=device)
        else:
            model = sources[job.model].load_model(device=device)
        return model

    def score(job: Job) -> dict:
        scores = evaluator.evaluate(build(job), tokenizer)
        return {
            "job": asdict(job),
            "scores": {t: s.value for t, s in scores.items()},
            "metrics": {t: s.metric for t, s in scores.items()},
            "degenerate": [t for t, s in scores.items() if s.degenerate],
        }

    cache = ScoreCache(
        score_cache,
        fingerprints,
        {
            "tasks": evaluator.tasks,
            "include_tasks": [str(Path(p).resolve()) for p in evaluator.include_tasks],
            "limit": config.limit,
            "seed": seed,
            "scoring": SCORING_VERSION,
            "degenerate_probe": evaluator.degenerate_probe,
            # Tasks on local files: the files' identity (absent when there are none, so older caches still match).
            **({"task_data": task_data_identity(evaluator.catalog.task_data)} if evaluator.catalog.local else {}),
        },
    )
    jobs = plan_jobs(config, len(freeriders), original is not None)
    racing = config.race_rounds > 1
    parts = race_parts(evaluator.document_indices(tokenizer), config.race_rounds, seed) if racing else []
    if len(parts) > 1:
        results = _raced(jobs, parts, build, score, cache, evaluator, tokenizer, config, tasks, freeriders, accelerator, progress)
    else:
        results = run_jobs(jobs, lambda job: cache.score(job, score), accelerator=accelerator, progress=progress)
    run_config = {"tasks": list(tasks), "include_tasks": list(evaluator.include_tasks), "seed": seed, **asdict(config)}
    if evaluator.catalog.local:
        run_config["task_data"] = task_data_identity(evaluator.catalog.task_data)
    sources = Sources(
        base=base.source,
        protected=protected.source,
        original=original.source if original is not None else None,
        freeriders=[FreeRiderSource(fr.name, list(fr.tasks)) for fr in freeriders],
    )
    return analyse(results, tasks, config, freeriders, with_original=original is not None, run_config=run_config, sources=sources)


def _raced(jobs, parts, build, score, cache, evaluator, tokenizer, config, tasks, freeriders, accelerator, progress) -> list[dict]:
    """The matrix with the attacker's search on a budget (:mod:`.racing`): the standalone models on every prompt, each
    (variant, method)'s grid raced over the parts of the prompts."""
    standalone = [job for job in jobs if not job.is_merge]
    results = run_jobs(standalone, lambda job: cache.score(job, score), accelerator=accelerator, progress=progress)
    shares = shares_of({r["job"]["model"]: r["scores"] for r in results}, tasks, freeriders)
    groups: dict[tuple, list] = {}
    for job in jobs:
        if job.is_merge:
            groups.setdefault((job.model, job.method), []).append((job, job.freerider))

    degenerate: dict[Job, set] = {}  # tasks a job's outputs were degenerate on, in some part

    def score_part(job: Job, index: int) -> dict:
        def run(job: Job) -> dict:
            scored = evaluator.evaluate(build(job), tokenizer, samples=parts[index])
            return {
                "scores": {t: [s.value, s.samples] for t, s in scored.items()},
                "degenerate": [t for t, s in scored.items() if s.degenerate],
            }

        result = cache.score(job, run, part={"index": index, "of": len(parts), "documents": parts[index]})
        degenerate.setdefault(job, set()).update(result.get("degenerate", []))
        return result["scores"]

    candidates = race(
        list(groups.values()),
        parts,
        lambda pairs: run_jobs(pairs, lambda pair: score_part(*pair), accelerator=accelerator, desc="self-test (race)", progress=progress),
        shares,
        floor=config.freerider_floor,
        z=config.race_z,
        keep=config.race_keep,
    )
    metrics = results[0]["metrics"]
    for candidate in candidates:
        results.append(
            {
                "job": asdict(candidate.key),
                "scores": candidate.scores(),
                "metrics": metrics,
                "prompts": candidate.dropped_at,
                "degenerate": sorted(degenerate.get(candidate.key, ())),
            }
        )
    return results


def shares_of(standalone: dict, tasks: Sequence[str], freeriders: Sequence[FreeRider]) -> Shares:
    return Shares(standalone, list(tasks), [list(fr.tasks) for fr in freeriders], "original" if "original" in standalone else "protected")


def headline_free_ride(merges: Sequence[MergeResult]) -> dict | None:
    """The protected model's merge (any method, scored on every prompt) that keeps the most of both skills."""
    rides = [m for m in merges if m.variant == "protected" and m.prompts is None and m.free_ride is not None]
    if not rides:
        return None
    top = max(rides, key=lambda m: m.free_ride)
    keys = ("method", "value", "free_ride", "defender_kept", "freerider_kept")
    return {key: getattr(top, key) for key in keys}


def analyse(
    results: list[dict],
    tasks: Sequence[str],
    config: SelfTestConfig,
    freeriders: Sequence[FreeRider],
    *,
    with_original: bool,
    run_config: dict | None = None,
    sources: Sources | None = None,
) -> SelfTestReport:
    """Turn raw job scores into the report: floors, attacker's best per method, retention, gates."""
    sources = sources or Sources(
        base="base",
        protected="protected",
        original="original" if with_original else None,
        freeriders=[FreeRiderSource(fr.name, list(fr.tasks)) for fr in freeriders],
    )
    standalone = {r["job"]["model"]: r["scores"] for r in results if r["job"]["method"] is None}
    metrics = next(iter(results))["metrics"]
    shares = shares_of(standalone, tasks, freeriders)
    merges = []
    for r in results:
        job = r["job"]
        if job["method"] is None:
            continue
        scored = shares.scored(r["scores"], job["freerider"])
        merges.append(
            MergeResult(
                variant=job["model"],
                method=job["method"],
                value=job["value"],
                freerider=job["freerider"],
                scores=r["scores"],
                defender_score=scored.defender_score,
                freerider_kept=scored.freerider_kept,
                defender_kept=scored.defender_kept,
                prompts=r.get("prompts"),
                degenerate=r.get("degenerate") or [],
                free_ride=free_ride(scored.defender_kept, scored.freerider_kept),
                extra=dict(job.get("extra") or ()) or None,
            )
        )

    def best(variant: str, method: str) -> BestMerge:
        pool = [m for m in merges if m.variant == variant and m.method == method and m.prompts is None]  # every prompt
        chosen, met = attacker_best(
            pool, config.freerider_floor, score=lambda m: m.defender_score, freerider_kept=lambda m: m.freerider_kept
        )
        overall = max(pool, key=lambda m: m.defender_score)
        rides = [m for m in pool if m.free_ride is not None]
        riding = max(rides, key=lambda m: m.free_ride) if rides else None
        return BestMerge(
            extra=chosen.extra,
            value=chosen.value,
            freerider=chosen.freerider,
            scores=chosen.scores,
            defender_score=chosen.defender_score,
            defender_kept=chosen.defender_kept,
            freerider_kept=chosen.freerider_kept,
            freerider_constraint_met=met,
            best_any_value=overall.value,
            best_any_defender_score=overall.defender_score,
            free_ride=free_ride(chosen.defender_kept, chosen.freerider_kept),
            best_free_ride_value=riding.value if riding else None,
            best_free_ride=riding.free_ride if riding else None,
            defender_kept_of_protected=gain_share(chosen.defender_score, shares.floor, shares.defender_score(standalone["protected"])),
        )

    variants = (["original"] if with_original else []) + ["protected"]
    best_by_method = {m.name: {v: best(v, m.name) for v in variants} for m in config.merge_methods()}
    gates = {}
    if with_original:
        drops = {t: 100 * (standalone["original"][t] - standalone["protected"][t]) for t in tasks}
        drop = max(drops.values())
        gates["standalone_drop"] = Gate(
            value=drop,
            threshold=config.max_standalone_drop,
            unit="points",
            passed=drop <= config.max_standalone_drop + TOLERANCE,
            per_task=drops,
        )
    kept = [b["protected"].defender_kept for b in best_by_method.values() if b["protected"].defender_kept is not None]
    worst = max(kept) if kept else None
    retention = Gate(
        value=worst,
        threshold=config.max_merged_retention,
        unit=RETENTION_UNIT,
        passed=worst is not None and worst <= config.max_merged_retention + TOLERANCE,
        worst_method=max(best_by_method, key=lambda m: best_by_method[m]["protected"].defender_kept or -math.inf),
    )
    if shares.defender_kept(shares.reference_score) is None:
        retention.passed = False
        retention.note = "the model is not better than the base on its tasks: nothing to protect"
    gates["merged_retention"] = retention
    return SelfTestReport(
        free_ride=headline_free_ride(merges),
        schema_version=SCHEMA_VERSION,
        tool_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        config=run_config or asdict(config),
        tasks=list(tasks),
        metrics=metrics,
        standalone=standalone,
        floor=Floor(defender_score=shares.floor, scores=standalone["base"]),
        merges=merges,
        best=best_by_method,
        gates=gates,
        passed=all(g.passed for g in gates.values()),
        sources=sources,
    )
