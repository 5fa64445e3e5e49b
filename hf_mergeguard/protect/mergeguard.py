"""MergeGuard (dual-stage weight protection): stage 1 density-aware fine-tuning, stage 2 adversarial weight
negation. Paper: ``shared/seeds/002_60348e0bc0400fd5.txt`` section 5; hyper-parameters from its section 6.1
(alpha = 0.01, k' = 10% critical layers kept, k = 10% of the rest masked), except three defaults changed by
measurement: beta = 2 (the paper's beta = 1), stage 1 off (``--stage1`` turns it on) and, when on, alpha = 0.001.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

from ..checkpoint import Checkpoint, stamp_metadata, write_checkpoint
from ..errors import ConfigError, TrainDataError
from .base import ProtectContext, ProtectionResult, finished, mark_finished, trained_checkpoint
from .criticality import exact_criticality, fast_criticality
from .negation import negate, negation_units, topk_threshold
from .stage1 import Stage1Config, density_aware_finetune

log = logging.getLogger(__name__)


@dataclass
class MergeGuardConfig:
    """MergeGuard's options (``stage1`` holds the training options)."""

    stage1: Stage1Config = field(default_factory=lambda: Stage1Config(steps=100, learning_rate=1e-4, batch_size=16))
    # Defaults are the best setting measured on the toy world (README, "MergeGuard as measured"): stage 1 as
    # the paper writes it made merges keep more of the skill, and beta = 1 (a reset to the base) barely hurt them.
    skip_stage1: bool = field(default=True, metadata={"help": "run stage 2 alone on the given model (--stage1 runs both)"})
    beta: float = field(default=2.0, metadata={"help": "negation strength: 1 resets masked entries to the base (the paper), 2 flips them"})
    exclude_share: float = field(default=0.1, metadata={"help": "k': share of most critical layers left untouched"})
    mask_share: float = field(default=0.1, metadata={"help": "k: share of the remaining |tau| entries negated"})
    criticality: str = field(default="fast", metadata={"help": "fast | exact"})
    granularity: str = field(default="matrix", metadata={"help": "matrix (each tensor of each block) | block"})
    calibration_size: int = field(default=32, metadata={"help": "examples of the calibration set (fast mode)"})
    check_factor: float = field(default=2.0, metadata={"help": "fast mode: exact checks per excluded layer"})
    mask_scope: str = field(default="global", metadata={"help": "global (top-k over the model) | tensor (top-k per tensor)"})

    def __post_init__(self):
        if isinstance(self.stage1, dict):
            self.stage1 = Stage1Config(**self.stage1)
        if self.criticality not in ("fast", "exact"):
            raise ConfigError(f"criticality must be 'fast' or 'exact', not {self.criticality!r}.")
        if self.mask_scope not in ("global", "tensor"):
            raise ConfigError(f"mask_scope must be 'global' or 'tensor', not {self.mask_scope!r}.")
        if not (0 <= self.exclude_share < 1 and 0 <= self.mask_share <= 1):
            raise ConfigError("exclude_share must be in [0, 1) and mask_share in [0, 1].")
        if self.beta < 0:
            raise ConfigError("beta must be >= 0.")

    def public_parameters(self) -> dict:
        params = {
            "stage 1": "skipped" if self.skip_stage1 else f"{self.stage1.steps} steps, lr {self.stage1.learning_rate:g}, alpha {self.stage1.alpha:g} ({self.stage1.reading} reading)",
            "beta": self.beta,
            "critical layers kept (k')": self.exclude_share,
            "entries negated (k)": self.mask_share,
            "criticality": f"{self.criticality} ({self.granularity})",
        }
        return params


def _stage1(ctx: ProtectContext, config: MergeGuardConfig) -> Checkpoint:
    def train(model, examples):
        base_state = ctx.base.state_dict() if config.stage1.reading.startswith("base") else None
        return density_aware_finetune(model, ctx.tokenizer, examples, config.stage1, base_state=base_state,
                                      accelerator=ctx.accelerator, progress=ctx.progress)

    checkpoint, _ = trained_checkpoint(
        ctx, "mergeguard-stage1", "mergeguard-stage1", train,
        needs="MergeGuard stage 1 needs the defender's training data (or --skip-stage1 to run stage 2 alone)",
    )
    return checkpoint


def _criticality(ctx: ProtectContext, config: MergeGuardConfig, theta_source: Checkpoint, units: dict) -> dict:
    folder = ctx.step_dir("mergeguard-criticality")
    record = finished(folder)
    if record is not None:
        log.info("Criticality: reusing the finished run in %s", folder)
        return record
    # Scoring layer variants needs both models in memory; the negation below streams instead.
    theta, base = theta_source.state_dict(), ctx.base.state_dict()
    if config.criticality == "exact":
        result = exact_criticality(
            ctx.model.config, theta, base, units, tokenizer=ctx.tokenizer, evaluator=ctx.evaluator,
            exclude_share=config.exclude_share, device=ctx.device, accelerator=ctx.accelerator, progress=ctx.progress,
        )
    else:
        if ctx.train_examples is None:
            raise TrainDataError(
                "Fast criticality needs a calibration set from the defender's data.",
                "Pass --train-data, or use --criticality exact (scores the tasks instead).",
            )
        calibration = list(ctx.train_examples())[: config.calibration_size]
        result = fast_criticality(
            ctx.model.config, theta, base, units, tokenizer=ctx.tokenizer, calibration=calibration,
            exclude_share=config.exclude_share, check_factor=config.check_factor,
            max_length=config.stage1.max_length, device=ctx.device,
        )
    record = result.to_dict()
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        mark_finished(folder, record)
    ctx.wait()
    return record


def negation_thresholds(theta: Checkpoint, base: Checkpoint, names: list[str], share: float, scope: str = "global") -> dict[str, float]:
    """Each negated tensor's |tau| threshold: the top ``share`` over all ``names`` (global) or per tensor.

    Streams one tensor pair at a time from disk, twice (see :func:`~.negation.topk_threshold`).
    """
    def abs_tau(selected):
        for (_, tensor), (_, anchor) in zip(theta.iter_tensors(selected), base.iter_tensors(selected)):
            yield (tensor.float() - anchor.float()).abs_()

    if scope == "global":
        threshold, _ = topk_threshold(lambda: abs_tau(names), share)
        return {name: threshold for name in names}
    return {name: topk_threshold(lambda n=name: abs_tau([n]), share)[0] for name in names}


def negated_tensors(theta: Checkpoint, base: Checkpoint, thresholds: dict[str, float], beta: float, counts: dict[str, int]):
    """Stage 2 in one streaming pass: every tensor of ``theta``, negated where it has a threshold.

    ``counts`` receives the number of negated entries per tensor. Both models are read ahead in background threads.
    """
    names = theta.tensor_names
    base_tensors = base.iter_tensors([name for name in names if name in thresholds])
    for name, tensor in theta.iter_tensors(names):
        if name in thresholds:
            _, base_tensor = next(base_tensors)
            tensor, counts[name] = negate(tensor, base_tensor, thresholds[name], beta)
        yield name, tensor


def run_mergeguard(ctx: ProtectContext, config: MergeGuardConfig) -> ProtectionResult:
    """Stage 1 (unless skipped), criticality, the top-k mask, the negation; the protected checkpoint."""
    theta_source = ctx.model if config.skip_stage1 else _stage1(ctx, config)
    folder = ctx.step_dir("mergeguard-protected")
    units = negation_units(theta_source.geometry, theta_source.tensor_names, config.granularity)
    crit = _criticality(ctx, config, theta_source, units)
    excluded = set(crit["excluded"])
    negated_names = [name for unit, names in units.items() if unit not in excluded for name in names]

    record = finished(folder)
    if record is not None:
        log.info("Negation: reusing the protected checkpoint in %s", folder)
    else:
        if ctx.is_main:
            # Two streaming passes for the top-k threshold, a third for the writer.
            thresholds = negation_thresholds(theta_source, ctx.base, negated_names, config.mask_share, config.mask_scope)
            counts: dict[str, int] = {}
            write_checkpoint(
                folder,
                negated_tensors(theta_source, ctx.base, thresholds, config.beta, counts),
                theta_source.layout,
                companions_from=ctx.original,
                metadata=stamp_metadata(method="mergeguard"),
                overwrite=True,
            )
            total = sum(math.prod(theta_source.spec(name).shape) for name in negated_names)
            record = {
                "negated_entries": sum(counts.values()),
                "negatable_entries": total,
                "negated_share": sum(counts.values()) / max(1, total),
                "units": len(units),
                "excluded_units": sorted(excluded),
            }
            mark_finished(folder, record)
        ctx.wait()
        record = finished(folder)
    stage1_record = None if config.skip_stage1 else finished(ctx.step_dir("mergeguard-stage1"))
    details = {
        "config": asdict(config),
        "stage1": stage1_record,
        "criticality": {k: v for k, v in crit.items() if k != "details"} | {"checked": crit.get("details", {}).get("checked")},
        "negation": record,
    }
    return ProtectionResult(Checkpoint(folder), "mergeguard", config.public_parameters(), details)
