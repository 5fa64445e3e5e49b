"""Adaptive attacks: a free-rider who knows the defense tries to undo it, and the self-test measures how far he gets.

Each attack starts from what a free-rider has (the protected model, the public base, his own fine-tune and, for
the fine-tuning attacks, a few examples of the defender's task) and ends with a merged model scored on the
defender's and the free-rider's tasks, like the self-test's merges. Its figure is the share of the defender's
skill gain over the base that the attacker's best result keeps (of the original fine-tune's gain).

* ``realign``: map the protected model back to the base's coordinates (``realign.py``: Hungarian matching of
  MLP neurons, least squares per attention head in the RoPE commutant, Procrustes), then run every merge method
  of the self-test on it. Undoes function-preserving defenses.
* ``unmask`` (MergeGuard section 7): subtract the protected task vector again from the attacker's best merge of
  each method, theta_merge - lambda * (theta_hat - theta_pre), lambda swept. (The paper writes lambda * theta_hat;
  subtracting whole weights would scale the model down, so the task vector is what is subtracted here.)
* ``graderase`` (MergeGuard section 7): estimate the defense's direction as v = -tau_G, tau_G the task vector
  of the base fine-tuned on the attacker's few examples, and fine-tune the merge on those examples with each
  gradient projected orthogonal to v.
* ``recover``: fine-tune the merge on the same few examples.

The merge the fine-tuning attacks start from is the protected merge that kept the most of the free-rider's own
skill (the one worth repairing). Since a few examples teach a skill by themselves, both are also compared with
the free-rider fine-tuned on the same examples the same way: only what the attack gains beyond that is credited
to the protected model (``beyond_data``) and can make the attack count as a defeat.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..checkpoint import model_from_state_dict
from ..errors import ConfigError
from ..sources import StateDictSource, materialize
from .merges import merge_state_dict, parse_methods

log = logging.getLogger(__name__)

ATTACKS = ("realign", "unmask", "graderase", "recover")
UNMASK_LAMBDAS = (0.1, 0.3, 0.5)
# Re-alignment that moves no tensor by more than this share of its norm found no symmetry to undo: its least
# squares alone move an unprotected toy fine-tune by up to 5.5% (they absorb part of the task vector), while
# PaRaMS, MergeLock and MergeBarrier put every protected model more than 100% away from its re-aligned self.
NO_SYMMETRY_TOLERANCE = 0.1


def parse_attacks(names: Sequence[str] | None) -> list[str]:
    if not names:
        return list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        from ..errors import UnknownNameError

        raise UnknownNameError("adaptive attack", unknown[0], ATTACKS)
    return list(dict.fromkeys(names))


@dataclass
class _Scorer:
    """Scores a model on the defender's and the free-riders' tasks, and turns scores into kept shares."""

    report: dict
    freeriders: Sequence
    tokenizer: object
    evaluator: object
    model_config: dict
    device: str

    @property
    def tasks(self) -> list[str]:
        return self.report["tasks"]

    def defender_score(self, scores: dict) -> float:
        return sum(scores[t] for t in self.tasks) / len(self.tasks)

    @property
    def floor(self) -> float:
        return self.report["floor"]["defender_score"]

    @property
    def reference(self) -> float:
        standalone = self.report["standalone"]
        return self.defender_score(standalone.get("original") or standalone["protected"])

    def kept(self, score: float) -> float:
        return (score - self.floor) / max(1e-9, self.reference - self.floor)

    def rider_kept(self, scores: dict, index: int) -> float | None:
        tasks = self.freeriders[index].tasks
        if not tasks:
            return None
        standalone = self.report["standalone"]
        own = sum(standalone[f"freerider{index}"][t] for t in tasks) / len(tasks)
        floor = sum(standalone["base"][t] for t in tasks) / len(tasks)
        return (sum(scores[t] for t in tasks) / len(tasks) - floor) / max(1e-9, own - floor)

    def score_model(self, model) -> dict:
        return {t: s.value for t, s in self.evaluator.evaluate(model, self.tokenizer).items()}

    def score_tensors(self, tensors: dict) -> dict:
        return self.score_model(model_from_state_dict(self.model_config, tensors, device=self.device))

    def entry(self, scores: dict, freerider: int, **extra) -> dict:
        score = self.defender_score(scores)
        return {"scores": scores, "defender_score": score, "defender_kept": self.kept(score),
                "freerider": freerider, "freerider_kept": self.rider_kept(scores, freerider), **extra}


def _attacker_best(entries: list[dict], floor_share: float) -> dict:
    """Like the self-test: the most defender skill among results that keep the free-rider's; else the best of all."""
    fair = [e for e in entries if e["freerider_kept"] is None or e["freerider_kept"] >= floor_share - 1e-9]
    best = dict(max(fair or entries, key=lambda e: e["defender_score"]))
    best["freerider_constraint_met"] = bool(fair)
    return best


def _relative_change(after: torch.Tensor, before: torch.Tensor) -> float:
    before = before.double()
    return float((after.double() - before).norm() / before.norm().clamp_min(1e-12))


def _realign(scorer: _Scorer, *, base, protected, freeriders, config, tokenizer, device, score_cache, progress) -> dict:
    from ..selftest import run_selftest
    from .realign import realigned_tensors

    tensors = dict(realigned_tensors(protected, base, progress))
    moved = max(_relative_change(tensors[name], before) for name, before in protected.iter_tensors())
    if moved < NO_SYMMETRY_TOLERANCE:
        # Re-aligning found no symmetry to undo (e.g. MergeGuard): the re-aligned model is the protected one up to
        # this tolerance, and its merges are the self-test's own.
        per_method = {m: {**{k: v["protected"][k] for k in ("value", "freerider", "defender_score", "freerider_kept", "freerider_constraint_met")},
                          "defender_kept": scorer.kept(v["protected"]["defender_score"])} for m, v in scorer.report["best"].items()}
        standalone = {t: scorer.report["standalone"]["protected"][t] for t in scorer.tasks}
        note = f"no symmetry found (re-aligning moves no tensor by more than {moved:.1e} of its norm): the self-test's merges stand"
    else:
        realigned = StateDictSource(tensors, protected.config, source="realigned")
        sub_config = dataclasses.replace(config, adaptive=False)
        sub = run_selftest(base=base, protected=realigned, tokenizer=tokenizer, config=sub_config, freeriders=freeriders,
                           device=device, progress=progress, score_cache=score_cache)
        per_method = {}
        for method, variants in sub["best"].items():
            chosen = variants["protected"]
            per_method[method] = {**{k: chosen[k] for k in ("value", "freerider", "defender_score", "freerider_kept", "freerider_constraint_met")},
                                  "defender_kept": scorer.kept(chosen["defender_score"])}
        standalone = {t: sub["standalone"]["protected"][t] for t in scorer.tasks}
        note = f"re-aligning moved the weights by up to {moved:.2f} of a tensor's norm"
    best_method = max(per_method, key=lambda m: (per_method[m]["freerider_constraint_met"], per_method[m]["defender_score"]))
    return {"standalone": standalone, "per_method": per_method, "best": {"method": best_method, **per_method[best_method]}, "note": note}


def _unmask(scorer: _Scorer, *, base, protected, freeriders, config) -> dict:
    methods = {m.name: m for m in parse_methods(config.methods)}
    entries = []
    for method, variants in scorer.report["best"].items():
        start = variants["protected"]
        merged = merge_state_dict(methods[method], start["value"], base=base, defender=protected,
                                  freeriders=[freeriders[start["freerider"]].model], seed=config.seed)
        for lam in UNMASK_LAMBDAS:
            tensors = {}
            for name, tensor in merged.items():
                tau_hat = protected.get(name).float() - base.get(name).float()
                tensors[name] = (tensor.float() - lam * tau_hat).to(tensor.dtype)
            entries.append(scorer.entry(scorer.score_tensors(tensors), start["freerider"], method=method, value=start["value"], unmask_lambda=lam))
    return {"tried": [{k: e[k] for k in ("method", "value", "unmask_lambda", "defender_kept", "freerider_kept")} for e in entries],
            "best": _attacker_best(entries, config.freerider_floor)}


def _fine_tune(model, tokenizer, examples, config, on_gradients=None):
    from ..training import TrainingConfig, train_causal_lm

    training = TrainingConfig(steps=config.attack_steps, learning_rate=config.attack_learning_rate,
                              batch_size=min(16, len(examples)), max_length=256, seed=config.seed)
    train_causal_lm(model, tokenizer, examples, training, progress=False, on_gradients=on_gradients)
    return model


def _repair_start(scorer: _Scorer, *, base, protected, freeriders, config) -> tuple[dict, dict]:
    """The protected merge worth repairing: the most free-rider skill kept, then the most defender skill."""
    candidates = [e for e in scorer.report["merges"] if e["variant"] == "protected"]
    start = max(candidates, key=lambda e: ((e["freerider_kept"] or 0.0), e["defender_score"]))
    method = {m.name: m for m in parse_methods(config.methods)}[start["method"]]
    tensors = merge_state_dict(method, start["value"], base=base, defender=protected,
                               freeriders=[freeriders[start["freerider"]].model], seed=config.seed)
    return start, tensors


def _finetune_attacks(kinds, scorer: _Scorer, *, base, protected, freeriders, config, tokenizer, examples, device) -> dict:
    if not examples:
        raise ConfigError("The graderase and recover attacks need a few examples of the defender's task.",
                          "Pass --train-data (the attacker's examples are taken from it), or leave those attacks out (--attacks realign,unmask).")
    examples = list(examples)[-config.attack_examples:]  # the end of the data: away from the calibration set
    start, merged = _repair_start(scorer, base=base, protected=protected, freeriders=freeriders, config=config)
    rider_index = start["freerider"]
    # What the examples alone buy: the free-rider's own model fine-tuned on them the same way.
    rider_model = freeriders[rider_index].model.load_model(device=device)
    data_only = scorer.entry(scorer.score_model(_fine_tune(rider_model, tokenizer, examples, config)), rider_index)
    results = {"start": {k: start[k] for k in ("method", "value", "freerider", "defender_kept", "freerider_kept")},
               "examples": len(examples), "steps": config.attack_steps, "learning_rate": config.attack_learning_rate,
               "data_only": {k: data_only[k] for k in ("defender_score", "defender_kept", "freerider_kept")}}
    if "recover" in kinds:
        model = model_from_state_dict(protected.config, merged, device=device)
        entry = scorer.entry(scorer.score_model(_fine_tune(model, tokenizer, examples, config)), rider_index)
        results["recover"] = {**entry, "beyond_data": entry["defender_kept"] - data_only["defender_kept"]}
    if "graderase" in kinds:
        base_model = base.load_model(device=device)
        base_state = {n: p.detach().clone() for n, p in base_model.named_parameters()}
        _fine_tune(base_model, tokenizer, examples, config)
        disturbance = {n: (base_state[n] - p.detach()) for n, p in base_model.named_parameters()}  # v = -tau_G
        norm2 = sum(float((v.double() ** 2).sum()) for v in disturbance.values())

        def project(module):
            params = dict(module.named_parameters())
            dot = sum(float((params[n].grad.double() * v.double()).sum()) for n, v in disturbance.items() if params[n].grad is not None)
            for n, v in disturbance.items():
                if params[n].grad is not None:
                    params[n].grad -= (dot / max(norm2, 1e-30)) * v.to(params[n].grad.dtype)

        model = model_from_state_dict(protected.config, merged, device=device)
        entry = scorer.entry(scorer.score_model(_fine_tune(model, tokenizer, examples, config, on_gradients=project)), rider_index)
        results["graderase"] = {**entry, "beyond_data": entry["defender_kept"] - data_only["defender_kept"]}
    return results


DESCRIPTIONS = {
    "realign": "re-aligned the protected model to the public base (Hungarian matching of MLP neurons, least squares per attention head), then merged it with every method",
    "unmask": "subtracted lambda x the protected task vector from its best merge of each method (lambda {lambdas})",
    "graderase": "fine-tuned the best merge on {examples} defender examples for {steps} steps, gradients projected off the estimated defense direction",
    "recover": "fine-tuned the best merge on {examples} defender examples for {steps} steps",
}


def run_adaptive_attacks(report: dict, *, base, protected, freeriders, tokenizer, config, examples=None,
                         device: str = "cpu", progress: bool = True, score_cache=None) -> dict:
    """Run ``config.attacks`` against ``protected`` after its self-test ``report``; returns ``report["robustness"]``.

    Rows and the sentence are what the card's Robustness section shows; ``gate`` is the adaptive gate: no attack
    may keep more than ``config.max_merged_retention`` of the defender's gain (fine-tuning attacks: beyond what
    their examples alone teach).
    """
    from ..evaluation import Evaluator

    kinds = parse_attacks(config.attacks)
    fr_tasks = sorted({t for fr in freeriders for t in fr.tasks} - set(config.tasks))
    evaluator = Evaluator(list(config.tasks) + fr_tasks, include_tasks=config.include_tasks, limit=config.limit,
                          batch_size=config.batch_size, allow_code_eval=config.allow_code_eval,
                          code_timeout=config.code_timeout)
    base, protected = materialize(base), materialize(protected)
    freeriders = [type(fr)(model=materialize(fr.model), tasks=fr.tasks, name=fr.name) for fr in freeriders]
    scorer = _Scorer(report, freeriders, tokenizer, evaluator, protected.config, device)
    results: dict = {}
    seconds: dict = {}
    tuning = [k for k in kinds if k in ("graderase", "recover")]  # one shared setup (start merge, data-only reference)
    for kind in [k for k in kinds if k not in tuning] + (["fine-tuning"] if tuning else []):
        started = time.perf_counter()
        log.info("Adaptive attack: %s", kind)
        if kind == "realign":
            results[kind] = _realign(scorer, base=base, protected=protected, freeriders=freeriders, config=config,
                                     tokenizer=tokenizer, device=device, score_cache=score_cache, progress=progress)
        elif kind == "unmask":
            results[kind] = _unmask(scorer, base=base, protected=protected, freeriders=freeriders, config=config)
        else:
            tuned = _finetune_attacks(tuning, scorer, base=base, protected=protected, freeriders=freeriders, config=config,
                                      tokenizer=tokenizer, examples=examples, device=device)
            setup = {k: tuned[k] for k in ("start", "examples", "steps", "learning_rate", "data_only")}
            results.update({name: {**tuned[name], "setup": setup} for name in tuning})
        seconds[kind] = time.perf_counter() - started
    return summarise(results, scorer, config, seconds)


def _credited(kind: str, result: dict) -> float:
    """The share that counts against the defense: fine-tuning attacks only for what beats their data alone."""
    best = result.get("best", result)
    return result["beyond_data"] if kind in ("graderase", "recover") else best["defender_kept"]


def summarise(results: dict, scorer: _Scorer, config, seconds: dict) -> dict:
    unprotected = max((v["original"]["defender_score"] for v in scorer.report["best"].values() if v.get("original")), default=None)
    rows, defeated = [], []
    for kind, result in results.items():
        best = result.get("best", result)
        credited = _credited(kind, result)
        defeats = credited > config.max_merged_retention
        if defeats:
            defeated.append(kind)
        setup = result.get("setup", {})
        description = DESCRIPTIONS[kind].format(lambdas=", ".join(f"{v:g}" for v in UNMASK_LAMBDAS),
                                                examples=setup.get("examples"), steps=setup.get("steps"))
        if kind in ("graderase", "recover"):
            description += f"; the examples alone (free-rider fine-tuned the same way) reach {100 * setup['data_only']['defender_score']:.1f}"
        rows.append({
            "attack": kind, "description": description,
            "score": f"{100 * best['defender_score']:.1f} ({100 * best['defender_kept']:.0f}% kept)",
            "unprotected": "–" if unprotected is None else f"{100 * unprotected:.1f}",
            "floor": f"{100 * scorer.floor:.1f}", "defeats": defeats,
            "credited_share": credited,
        })
    if defeated:
        sentence = (f"{', '.join(defeated)} defeat{'s' if len(defeated) == 1 else ''} this protection: the attacker's merge keeps more than "
                    f"{100 * config.max_merged_retention:.0f}% of this model's skill gain. Do not rely on it against a free-rider who knows the method.")
    else:
        sentence = (f"None of the {len(rows)} adaptive attacks kept more than {100 * config.max_merged_retention:.0f}% of this model's skill gain "
                    "in a merge (fine-tuning attacks: beyond what their examples alone teach).")
    worst = max(rows, key=lambda r: r["credited_share"]) if rows else None
    gate = {
        "value": worst["credited_share"] if worst else None, "worst_attack": worst["attack"] if worst else None,
        "threshold": config.max_merged_retention, "unit": "share of the defender's skill gain over the base",
        "passed": not defeated,
    }
    return {"attacks": results, "rows": rows, "sentence": sentence, "gate": gate, "seconds": seconds}


def attach_robustness(report: dict, robustness: dict) -> dict:
    """The report with its ``robustness`` section and the adaptive gate among its gates."""
    gates = {**report["gates"], "adaptive_retention": robustness["gate"]}
    return {**report, "robustness": robustness, "gates": gates, "passed": all(g["passed"] for g in gates.values())}
