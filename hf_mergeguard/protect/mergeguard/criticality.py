"""Which "layers" (units) are critical to the defender's skill: MergeGuard stage 2 leaves the top k' alone.

Criticality of a unit = how much the model gets worse when that unit's task vector is removed (reset to the
base). Two modes:

* ``exact`` (the paper's): score the defender's tasks with lm-eval once per unit; drop = score(theta') -
  score(theta' with unit l reset). The paper spends 300-640 minutes per LLM per task on this.
* ``fast``: one backward pass over the calibration set, one example at a time, gives a first-order screen
  for every unit at once: the mean over examples of |g_i . tau_l| (how much resetting unit l moves each
  example's loss). Only the units the screen ranks highest get an exact calibration-loss check (the loss with
  the unit reset), and the excluded units are the top of those exact checks. Units the screen does not rank
  high get score 0 (not measured).

Costs are counted in model evaluations, i.e. forward passes of the model over one example (a backward pass
counted as two; a generated answer counted as one pass, which flatters ``exact``), in the tokens of those
passes, and in model variants scored, so both modes can be compared on the same run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from ...distributed import run_jobs
from ...io.hf_models import model_from_state_dict
from ...losses import mean_batch_loss, mean_token_loss
from ...training import Example, loss_batches
from .negation import excluded_count


@dataclass
class CriticalityResult:
    mode: str
    scores: dict[str, float]
    excluded: list[str]
    variants: int  # model variants scored (the unchanged model included)
    example_passes: int  # forward passes over one example (a backward pass counted as two)
    tokens: int  # tokens in those passes
    seconds: float
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _reset_unit(theta: dict[str, torch.Tensor], base: dict[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    variant = dict(theta)
    for name in names:
        variant[name] = base[name]
    return variant


def _rank(scores: dict[str, float], count: int) -> list[str]:
    # Stable: ties keep the model's own order of units.
    order = sorted(scores, key=lambda unit: -scores[unit])
    return order[:count]


def _single_examples(batches: list[dict]):
    """The calibration batches one example at a time (padding cut off), for per-example gradients."""
    for batch in batches:
        for row in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][row].bool()
            yield {key: value[row : row + 1, keep] for key, value in batch.items()}


def fast_criticality(
    config: dict,
    theta: dict[str, torch.Tensor],
    base: dict[str, torch.Tensor],
    units: dict[str, list[str]],
    *,
    tokenizer,
    calibration: Sequence[Example],
    exclude_share: float,
    check_factor: float = 2.0,
    max_length: int = 512,
    batch_size: int = 16,
    device: str = "cpu",
) -> CriticalityResult:
    """First-order screen + exact calibration-loss checks of the top candidates (see the module docstring).

    The scores are the calibration-loss increases of the checked units (0 for units not checked).

    Args:
        check_factor: how many units get the exact check, as a multiple of the number to exclude.
    """
    start = time.perf_counter()
    batches, sequence_tokens = loss_batches(tokenizer, calibration, max_length=max_length, batch_size=batch_size, device=device)
    model = model_from_state_dict(config, {k: v.clone() for k, v in theta.items()}, device=device)
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    # The screen: mean over examples of |g_i . tau_l|, the first-order change of example i's loss when unit l
    # is reset. Not the mean gradient: at a converged fine-tune it is close to zero and the signed changes of
    # the examples cancel, so -g . tau missed units that matter (measured on the toy world, see docs/methods.md).
    screen = {unit: 0.0 for unit in units}
    tau = {name: (theta[name].float() - base[name].float()).to(device) for names in units.values() for name in names}
    examples = 0
    for single in _single_examples(batches):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=single["input_ids"], attention_mask=single["attention_mask"]).logits
        mean_token_loss(logits, single["labels"]).backward()
        examples += 1
        for unit, names in units.items():
            change = 0.0
            for name in names:
                grad = params[name].grad
                if grad is not None:
                    change += float((grad.float() * tau[name]).sum())
            screen[unit] += abs(change)
    screen = {unit: value / max(1, examples) for unit, value in screen.items()}
    del tau
    model.zero_grad(set_to_none=True)
    for p in params.values():
        p.requires_grad_(False)

    n_exclude = excluded_count(len(units), exclude_share)
    n_check = min(len(units), max(n_exclude, int(round(check_factor * n_exclude))))
    candidates = _rank(screen, n_check)
    baseline = mean_batch_loss(model, batches)
    exact = {}
    for unit in candidates:
        for name in units[unit]:
            params[name].data.copy_(base[name].to(params[name].device, params[name].dtype))
        exact[unit] = mean_batch_loss(model, batches) - baseline
        for name in units[unit]:
            params[name].data.copy_(theta[name].to(params[name].device, params[name].dtype))
    scores = {unit: exact.get(unit, 0.0) for unit in units}
    excluded = _rank(exact, n_exclude) if exact else []
    passes = 3 + 1 + len(candidates)  # screen (forward + backward), baseline loss, one loss per checked unit
    return CriticalityResult(
        "fast",
        scores,
        excluded,
        1 + len(candidates),
        passes * len(calibration),
        passes * sequence_tokens,
        time.perf_counter() - start,
        {"screen": screen, "checked": candidates, "baseline_loss": baseline, "calibration_examples": len(calibration)},
    )


def exact_criticality(
    config: dict,
    theta: dict[str, torch.Tensor],
    base: dict[str, torch.Tensor],
    units: dict[str, list[str]],
    *,
    tokenizer,
    evaluator,
    exclude_share: float,
    device: str = "cpu",
    accelerator=None,
    progress: bool = True,
) -> CriticalityResult:
    """The paper's criticality: lm-eval task score with each unit's task vector removed."""
    start = time.perf_counter()
    tasks = evaluator.tasks

    def score(unit: str | None) -> float:
        variant = theta if unit is None else _reset_unit(theta, base, units[unit])
        model = model_from_state_dict(config, {k: v.clone() for k, v in variant.items()}, device=device)
        scores = evaluator.evaluate(model, tokenizer)
        return sum(scores[t].value for t in tasks) / len(tasks)

    jobs = [None, *units]
    values = run_jobs(jobs, score, accelerator=accelerator, desc="criticality (exact)", progress=progress)
    reference = values[0]
    scores = {unit: reference - value for unit, value in zip(units, values[1:])}
    excluded = _rank(scores, excluded_count(len(units), exclude_share))
    examples = evaluator.documents()
    tokens = (1 + len(units)) * sum(len(tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"]) for r in examples)
    return CriticalityResult(
        "exact",
        scores,
        excluded,
        1 + len(units),
        (1 + len(units)) * len(examples),
        tokens,
        time.perf_counter() - start,
        {"reference_score": reference, "examples_per_evaluation": len(examples)},
    )


def agreement(a: CriticalityResult, b: CriticalityResult) -> float:
    """Share of ``a``'s excluded units that ``b`` excludes too."""
    if not a.excluded:
        return 1.0
    return len(set(a.excluded) & set(b.excluded)) / len(a.excluded)
