"""What an adaptive attack is (an :class:`AttackSpec` in :data:`ATTACKS`) and what it gets (an :class:`AttackContext`).

An attack starts from what a free-rider has (the protected model, the public base, his own fine-tune and, for the
fine-tuning attacks, a few examples of the defender's task) and ends with a model scored on the defender's and the
free-rider's tasks, like the self-test's merges. It returns an :class:`~hf_mergeguard.report.schema.AttackResult`
whose ``credited`` share of the defender's gain counts against the defense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..distributed import run_jobs
from ..io.hf_models import model_from_state_dict
from ..registry import Registry
from ..report.schema import AttackResult, ScoredModel, SelfTestReport, to_dict
from ..report.scoring import Shares, attacker_best, free_ride
from .merges import get_merge_method, merge_state_dict


@dataclass
class AttackContext:
    """What an attack works with, built by the self-test after its merges.

    Args:
        report: the self-test's report (the attacks start from its merges).
        shares: turns scores into kept shares (the same as the report's).
        base, protected: the public base and the released model, in memory.
        freeriders: the free-riders of the self-test (``.model``, ``.tasks``).
        tokenizer, evaluator: score a model on the defender's and the free-riders' tasks.
        config: the self-test's options (``attack_examples``, ``attack_steps``, ...).
        examples: the defender examples an attacker has (fine-tuning attacks), or None.
        merge_matrix: the self-test's merges of another model (``merge_matrix(source) -> SelfTestReport``).
        keep_models: keep a model an attack produces (``AttackResult.model``) for the caller to write.
        accelerator: the run's ``accelerate.Accelerator`` (one per run: the fine-tuning attacks train with it, and
            :meth:`map` splits independent scorings over its processes).
    """

    report: SelfTestReport
    shares: Shares
    base: Any
    protected: Any
    freeriders: Sequence[Any]
    tokenizer: Any
    evaluator: Any
    config: Any
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    examples: Sequence | None = None
    merge_matrix: Callable[[Any], SelfTestReport] | None = None
    keep_models: bool = False
    accelerator: Any = None
    _shared: dict = field(default_factory=dict)

    def map(self, jobs: Sequence[Any], worker: Callable[[Any], Any], desc: str) -> list[Any]:
        """``worker`` on every job, split over the run's processes; every process gets all results, in order."""
        return run_jobs(jobs, worker, accelerator=self.accelerator, desc=desc, progress=self.progress)

    def score_model(self, model) -> dict[str, float]:
        return {task: score.value for task, score in self.evaluator.evaluate(model, self.tokenizer).items()}

    def score_tensors(self, tensors: dict) -> dict[str, float]:
        return self.score_model(model_from_state_dict(self.protected.config, tensors, device=self.device))

    def merge(self, method: str, value: float | None, freerider: int, extra: dict | None = None) -> dict:
        """The protected model merged with free-rider ``freerider`` by ``method`` at ``value`` (and ``extra``: asymmetric
        weights, lambda, another seed), as the self-test did."""
        return merge_state_dict(
            get_merge_method(method),
            value,
            base=self.base,
            defender=self.protected,
            freeriders=[self.freeriders[freerider].model],
            seed=self.seed,
            extra=extra,
        )

    def scored(self, scores: dict, freerider: int, **where) -> ScoredModel:
        return self.shares.scored(scores, freerider, **where)

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """What several attacks share (the fine-tuning attacks' start merge), made once."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]


@dataclass(frozen=True)
class AttackSpec:
    """One adaptive attack.

    Args:
        name: the ``--attacks`` / ``--kind`` name.
        run: ``run(ctx) -> AttackResult``.
        rank: attacks run, and are listed, in rank order.
        describe: what the card says the attack did, from its result.
        needs_examples: it fine-tunes on defender examples (``--train-data``).
        held_model_copies: model-sized tensor sets it holds besides the model it fine-tunes (for the memory check).
        model_folder: where ``hf-mergeguard attack -o OUT`` writes the model the attack produced (``OUT/<folder>``).
        work: ``work(selftest_config, matrix_size) -> [Work]``: what it will do, for ``--plan``
            (:mod:`hf_mergeguard.workload`; the fine-tuning attacks' shared start is counted once by the plan).
        default: in the self-test by default; the others run with ``--thorough`` or when named in ``--attacks``.
        memory: ``memory(selftest_config, shape, stored_bytes) -> StageMemory``: the attack's modelled peak, when it is
            not the fine-tuning attacks' (a full fine-tune in float32, or a LoRA with ``--attack-lora-rank``).
        fits_with: what to change when it does not fit (shown by the memory pre-flight).
    """

    name: str
    run: Callable[[AttackContext], AttackResult]
    rank: int
    describe: Callable[[AttackResult], str]
    needs_examples: bool = False
    model_folder: str | None = None
    held_model_copies: int = 0
    work: Callable[..., list] | None = None
    default: bool = True
    memory: Callable[..., Any] | None = None
    fits_with: str = "--attack-lora-rank 16, or --no-adaptive"


ATTACKS: Registry[AttackSpec] = Registry("adaptive attack", discover="hf_mergeguard.attacks")


def register_attack(spec: AttackSpec) -> AttackSpec:
    return ATTACKS.add(spec.name, spec)


def parse_attacks(names: Sequence[str] | None, thorough: bool = False) -> list[str]:
    """The attacks to run, in rank order: ``names``, or ``["all"]`` (every one), or None (the default ones; every one
    with ``thorough``); unknown names get "did you mean"."""
    if list(names or []) == ["all"] or (not names and thorough):
        specs = ATTACKS.values()
    elif not names:
        specs = [spec for spec in ATTACKS.values() if spec.default]
    else:
        specs = [ATTACKS.get(name) for name in dict.fromkeys(names)]
    return [spec.name for spec in sorted(specs, key=lambda spec: spec.rank)]


def matrix_attack_result(name: str, ctx: AttackContext, report: SelfTestReport, details: dict) -> AttackResult:
    """The result of an attack that turns the release into another model and merges it like the self-test
    (``report``: that model's merge matrix): the attacker's best over the methods, each method's best in the details."""
    per_method = {
        method: ScoredModel(
            defender_score=b.defender_score,
            defender_kept=ctx.shares.defender_kept(b.defender_score),
            freerider=b.freerider,
            freerider_kept=b.freerider_kept,
            scores=b.scores,
            method=method,
            value=b.value,
            freerider_constraint_met=b.freerider_constraint_met,
            free_ride=free_ride(ctx.shares.defender_kept(b.defender_score), b.freerider_kept),
        )
        for method, b in ((method, variants["protected"]) for method, variants in report.best.items())
    }
    best, _ = attacker_best(
        list(per_method.values()), ctx.config.freerider_floor, score=lambda r: r.defender_score, freerider_kept=lambda r: r.freerider_kept
    )
    standalone = {task: report.standalone["protected"][task] for task in ctx.shares.tasks}
    details = {**details, "standalone": standalone, "per_method": to_dict(per_method)}
    return AttackResult(name, best, credited=best.defender_kept, details=details)
