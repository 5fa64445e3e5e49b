"""The adaptive attacks after the merges: every attack of :data:`~hf_mergeguard.attacks.base.ATTACKS` the config asks
for, against the protected model, and the adaptive gate (no attack may keep more than ``max_merged_retention`` of the
defender's gain; fine-tuning attacks: beyond what their examples alone teach).

Every process runs the same attacks in the same order (merges are seeded, decoding is greedy, training is seeded),
so the fine-tuning attacks' DDP steps meet on every rank and all ranks end with the same figures.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Sequence

from ..attacks.base import ATTACKS, AttackContext
from ..digests import config_digest
from ..io.atomic import write_text_atomically
from ..io.sources import materialize
from ..report.schema import AttackResult, Gate, Robustness, SelfTestReport, from_dict, to_dict
from ..report.scoring import TOLERANCE
from .config import SelfTestConfig
from .freeriders import FreeRider
from .matrix import RETENTION_UNIT, run_selftest, shares_of

log = logging.getLogger(__name__)


def run_adaptive_attacks(
    report: SelfTestReport,
    *,
    base,
    protected,
    freeriders: Sequence[FreeRider],
    tokenizer,
    evaluator,
    config: SelfTestConfig,
    seed: int = 0,
    examples=None,
    device: str = "cpu",
    progress: bool = True,
    score_cache=None,
    keep_models: bool = False,
    accelerator=None,
    resume_dir: str | Path | None = None,
) -> SelfTestReport:
    """Run ``config.attacks`` against ``protected`` after its self-test ``report``; returns the report with its
    ``robustness`` section and the ``adaptive_retention`` gate.

    ``accelerator``: the run's (the fine-tuning attacks train with it; independent scorings are split over its
    processes). ``resume_dir``: each attack's result is written there as it finishes and read back by a rerun with
    the same report and options (a crash in the third attack does not repeat the first two).
    """
    resume = _AttackResults(resume_dir, report, config, seed, accelerator) if resume_dir is not None else None
    base, protected = materialize(base), materialize(protected)
    freeriders = [FreeRider(model=materialize(fr.model), tasks=fr.tasks, name=fr.name) for fr in freeriders]

    def merge_matrix(source) -> SelfTestReport:
        """The self-test's merges of another model (the re-aligned one), without its own adaptive attacks."""
        return run_selftest(
            base=base,
            protected=source,
            tokenizer=tokenizer,
            evaluator=evaluator,
            tasks=report.tasks,
            config=dataclasses.replace(config, adaptive=False),
            freeriders=freeriders,
            seed=seed,
            accelerator=accelerator,
            device=device,
            progress=progress,
            score_cache=score_cache,
        )

    ctx = AttackContext(
        report=report,
        shares=shares_of(report.standalone, report.tasks, freeriders),
        base=base,
        protected=protected,
        freeriders=freeriders,
        tokenizer=tokenizer,
        evaluator=evaluator,
        config=config,
        seed=seed,
        device=device,
        progress=progress,
        examples=examples,
        merge_matrix=merge_matrix,
        keep_models=keep_models,
        accelerator=accelerator,
    )
    results = {}
    for name in config.attack_names():
        result = resume.load(name) if resume is not None and not keep_models else None
        if result is None:
            log.info("Adaptive attack: %s", name)
            started = time.perf_counter()
            result = ATTACKS.get(name).run(ctx)
            result.seconds = time.perf_counter() - started
            if resume is not None:
                resume.save(result)
        else:
            log.info("Adaptive attack: %s (reusing the finished result in %s)", name, resume.folder)
        result.defeats = result.credited is not None and result.credited > config.max_merged_retention + TOLERANCE
        results[name] = result
    unprotected = max((v["original"].defender_score for v in report.best.values() if "original" in v), default=None)
    robustness = Robustness(attacks=results, threshold=config.max_merged_retention, floor=ctx.shares.floor, unprotected=unprotected)
    credited = {name: r.credited for name, r in results.items() if r.credited is not None}
    worst = max(credited, key=credited.get) if credited else None
    gate = Gate(
        value=credited.get(worst),
        threshold=config.max_merged_retention,
        unit=RETENTION_UNIT,
        passed=bool(credited) and not robustness.defeated_by,
        worst_attack=worst,
    )
    if not credited:
        gate.note = "no attack had a skill gain to measure: the model is not better than the base on its tasks"
    return report.with_robustness(robustness, gate)


class _AttackResults:
    """Finished attacks of one adaptive stage, one JSON file each, keyed by what their result depends on (the
    self-test's merges and scores, the options, the seed)."""

    def __init__(self, folder: str | Path, report: SelfTestReport, config: SelfTestConfig, seed: int, accelerator):
        self.folder = Path(folder)
        self.is_main = accelerator is None or accelerator.is_main_process
        merges = [to_dict(m) for m in report.merges]
        self.key = config_digest({"merges": merges, "standalone": report.standalone, "config": dataclasses.asdict(config), "seed": seed})

    def path(self, name: str) -> Path:
        return self.folder / f"{name}-{self.key[:16]}.json"

    def load(self, name: str) -> AttackResult | None:
        path = self.path(name)
        return from_dict(AttackResult, json.loads(path.read_text())) if path.is_file() else None

    def save(self, result: AttackResult) -> None:
        if self.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.path(result.attack), json.dumps(to_dict(result)))
