"""MergeGuard (dual-stage weight protection): stage 1 density-aware fine-tuning, stage 2 adversarial weight
negation.

Paper: "Defending Unauthorized Model Merging via Dual-Stage Weight Protection" (arXiv:2511.11851), section 5;
hyper-parameters from its section 6.1 (alpha = 0.01, k' = 10% critical layers kept, k = 10% of the rest masked),
except three defaults changed by measurement: beta = 2 (the paper's beta = 1), stage 1 off (``--stage1`` turns it
on) and, when on, alpha = 0.001.

* ``stage1``       the density-aware fine-tune (task loss + alpha x a per-layer L2 term, four readings)
* ``criticality``  which layers are critical (exact: lm-eval per layer; fast: a screen + calibration-loss checks)
* ``negation``     the units, the exact streaming top-k threshold, the negation itself
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict

import torch

from ...errors import ConfigError, TrainDataError
from ...io.checkpoint import Checkpoint
from ...io.writer import stamp_metadata, write_checkpoint
from ...training import RunConfig
from ...workload import Work, training_work
from ..base import DefenseSpec, ProtectContext, ProtectionResult, register_defense
from ..steps import finished, mark_finished, trained_checkpoint
from .config import MergeGuardConfig
from .criticality import exact_criticality, fast_criticality
from .negation import negate, negation_units, topk_threshold
from .stage1 import density_aware_finetune

log = logging.getLogger(__name__)


def _stage1(ctx: ProtectContext, config: MergeGuardConfig) -> Checkpoint:
    def train(model, examples):
        base_state = ctx.base.state_dict() if config.stage1.reading.startswith("base") else None
        return density_aware_finetune(
            model, ctx.tokenizer, examples, config.stage1, base_state=base_state, accelerator=ctx.accelerator, progress=ctx.progress
        )

    checkpoint, _ = trained_checkpoint(
        ctx,
        "mergeguard-stage1",
        "mergeguard-stage1",
        train,
        needs="MergeGuard stage 1 needs the defender's training data (or --skip-stage1 to run stage 2 alone)",
        dtype=None if config.stage1.lora_rank else torch.float32,  # a LoRA trains on the weights as stored
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
            ctx.model.config,
            theta,
            base,
            units,
            tokenizer=ctx.tokenizer,
            evaluator=ctx.evaluator,
            exclude_share=config.exclude_share,
            device=ctx.device,
            accelerator=ctx.accelerator,
            progress=ctx.progress,
        )
    else:
        if ctx.train_examples is None:
            raise TrainDataError(
                "Fast criticality needs a calibration set from the defender's data.",
                "Pass --train-data, or use --criticality exact (scores the tasks instead).",
            )
        calibration = list(ctx.train_examples())[: config.calibration_size]
        result = fast_criticality(
            ctx.model.config,
            theta,
            base,
            units,
            tokenizer=ctx.tokenizer,
            calibration=calibration,
            exclude_share=config.exclude_share,
            check_factor=config.check_factor,
            max_length=config.stage1.max_length,
            device=ctx.device,
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
    return ProtectionResult(Checkpoint(folder), "mergeguard", config.public_parameters(), details, warnings=sign_flip_warning(config))


def sign_flip_warning(config: MergeGuardConfig) -> list[str]:
    """beta > 1 flips the masked entries' signs: anyone holding the public base reads the flipped entries off (they
    point away from the base where the rest of the task vector points toward it) and flips them back."""
    if config.beta <= 1:
        return []
    return [
        f"MergeGuard ran with beta = {config.beta:g}: the masked entries' signs are flipped, which the signrestore attack "
        "undoes from the public base without any key. The part of this protection that comes from the flip is not "
        "protection; the self-test's signrestore row measures what is left. --method mergeguard-paper (beta = 1) or "
        "--method trap do not rely on it."
    ]


def check_runnable(config: MergeGuardConfig, run: RunConfig, has_train_data: bool) -> None:
    """Stage 1 trains on the defender's data and fast criticality takes its calibration set from it."""
    needs = [] if config.skip_stage1 else ["stage 1 trains on it"]
    if config.criticality == "fast":
        needs.append("fast criticality takes its calibration set from it")
    if needs and not has_train_data:
        raise TrainDataError(
            f"MergeGuard needs the defender's training data ({'; '.join(needs)}).",
            "Pass --train-data (a JSONL file or a Hub dataset), or --skip-stage1 --criticality exact to do without.",
        )
    if run.fsdp and config.stage1.lora_rank and not config.skip_stage1:
        raise ConfigError(
            "--stage1-lora-rank does not run under --fsdp (FSDP shards full-weight training).",
            "Drop --fsdp (a LoRA stage 1 of an 8B fits one 80 GB GPU), or --stage1-lora-rank 0 to shard every weight.",
        )


def stage1_memory(config: MergeGuardConfig, shape, stored_bytes: int, processes: int, run: RunConfig):
    """Stage 1's peak per process: every weight in float32 with AdamW (sharded over the processes with --fsdp), or a
    LoRA; None when it is skipped (stage 2 streams one tensor at a time)."""
    if config.skip_stage1:
        return None
    from ...memory import finetune_memory, lora_finetune_memory

    stage1 = config.stage1
    tokens = stage1.tokens_per_process(processes)
    if stage1.lora_rank:
        return lora_finetune_memory(
            shape,
            stored_bytes=stored_bytes,
            lora_rank=stage1.lora_rank,
            tokens=tokens,
            checkpointing=stage1.gradient_checkpointing,
            stage="MergeGuard stage 1 (LoRA)",
        )
    return finetune_memory(
        shape,
        weight_bytes=4,
        tokens=tokens,
        checkpointing=stage1.gradient_checkpointing,
        stage="MergeGuard stage 1",
        shards=processes if run.fsdp else 1,
    )


def mergeguard_work(config: MergeGuardConfig, shape, geometry) -> list[Work]:
    """For ``--plan``: stage 1, then criticality (exact: one scoring on the defender's tasks per unit; fast: a gradient
    screen over the calibration set and loss checks of ``check_factor`` x the excluded units), then one pass of
    negation over the weights."""
    work = [] if config.skip_stage1 else [training_work("MergeGuard stage 1", config.stage1, lora=bool(config.stage1.lora_rank))]
    units = len(negation_units(geometry, geometry.expected_tensor_names(), config.granularity))
    if config.criticality == "exact":
        work.append(Work("criticality (exact)", defender_scorings=units))
    else:
        checks = math.ceil(config.check_factor * math.ceil(config.exclude_share * units))
        tokens = config.calibration_size * config.stage1.max_length
        work.append(Work("criticality (fast)", forward_tokens=3 * tokens + checks * tokens))  # a backward is ~2 forwards
    return work + [Work("negation", streamed_passes=1)]


register_defense(
    DefenseSpec(
        name="mergeguard",
        options=MergeGuardConfig,
        run=run_mergeguard,
        stack_rank=20,  # measures the task vector against the base: before any function-preserving transform
        card_text=(
            "MergeGuard (dual-stage weight protection): optional density-aware fine-tuning (stage 1), then the "
            "top-k largest entries of the task vector outside the most critical layers are negated "
            "(theta - beta * M * tau; beta = 1 resets them to the base, beta = 2 flips them)."
        ),
        reference="Defending Unauthorized Model Merging via Dual-Stage Weight Protection (arXiv:2511.11851)",
        check=check_runnable,
        memory=stage1_memory,
        work=mergeguard_work,
        fits_with="--stage1-lora-rank 16 --gradient-checkpointing, --fsdp over several GPUs, fewer examples per micro-batch "
        "(--gradient-accumulation-steps, --max-length), or --skip-stage1",
    )
)
