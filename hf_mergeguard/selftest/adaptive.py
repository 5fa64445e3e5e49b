"""The adaptive attacks after the merges: every attack of :data:`~hf_mergeguard.attacks.base.ATTACKS` the config asks
for, against the protected model, and the adaptive gate (no attack may keep more than ``max_merged_retention`` of the
defender's gain; fine-tuning attacks: beyond what their examples alone teach).

Every process runs the same attacks in the same order (merges are seeded, decoding is greedy, training is seeded),
so the fine-tuning attacks' DDP steps meet on every rank and all ranks end with the same figures.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

from ..attacks.base import ATTACKS, AttackContext, parse_attacks
from ..io.sources import materialize
from ..report.schema import Gate, Robustness, SelfTestReport
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
) -> SelfTestReport:
    """Run ``config.attacks`` against ``protected`` after its self-test ``report``; returns the report with its
    ``robustness`` section and the ``adaptive_retention`` gate."""
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
    )
    results = {}
    for name in parse_attacks(config.attacks):
        log.info("Adaptive attack: %s", name)
        started = time.perf_counter()
        result = ATTACKS.get(name).run(ctx)
        result.seconds = time.perf_counter() - started
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
