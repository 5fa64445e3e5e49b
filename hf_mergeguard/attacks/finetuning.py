"""What the fine-tuning attacks (``recover``, ``graderase``) share: the merge they start from, the attacker's few
examples, and what those examples teach on their own.

The start is the protected merge that kept the most of the free-rider's own skill (the one worth repairing). A few
examples teach a skill by themselves, so the free-rider's own model is fine-tuned on the same examples the same way;
and any released model is a teacher, so it is also fine-tuned the same way on the protected model's own answers to
those prompts (distillation, which no weight defense can stop). Only what an attack reaches *beyond* the better of
the two is credited to it (``beyond_data``) and can make it a defeat.

With ``--thorough`` the attacker searches how to fine-tune (:func:`search_settings`, one change at a time from the
default: a third and three times the learning rate, twice the steps, a LoRA instead of every weight or the other way
round, and the merge that kept the most of the defender's skill as the start). The references get the same search
(a start does not apply to them), and an attack is credited with its best setting beyond the best reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..errors import ConfigError
from ..io.hf_models import model_from_state_dict
from ..report.schema import AttackResult, MergeResult, ScoredModel, to_dict
from ..report.scoring import attacker_best
from ..trained_change import TrainedModel
from ..training import TrainingConfig, padding_id, train_causal_lm
from ..workload import Work
from .base import AttackContext

FREERIDER_START = "freerider"  # the protected merge that kept the most of the free-rider's own skill
DEFENDER_START = "defender"  # the attacker's best merge by the defender's score (keeping the free-rider's skill)
LORA_RANK_SEARCHED = 16  # the LoRA tried when the attacks train every weight


@dataclass(frozen=True)
class FineTuneSetting:
    """How the attacker fine-tunes: the learning rate as a factor of the attack rate, the steps (None:
    ``--attack-steps``), the LoRA rank (None: ``--attack-lora-rank``; 0: every weight) and the merge it starts from."""

    rate_factor: float = 1.0
    steps: int | None = None
    lora_rank: int | None = None
    start: str = FREERIDER_START

    def resolved(self, config) -> FineTuneSetting:
        """The setting with every None filled in from ``config``."""
        return replace(
            self,
            steps=config.attack_steps if self.steps is None else self.steps,
            lora_rank=config.attack_lora_rank if self.lora_rank is None else self.lora_rank,
        )

    @property
    def training(self) -> tuple:
        """What the training depends on (the references do not have a start)."""
        return (self.rate_factor, self.steps, self.lora_rank)

    def label(self, config) -> str:
        s = self.resolved(config)
        mode = f"LoRA r={s.lora_rank}" if s.lora_rank else "every weight"
        return f"lr x{s.rate_factor:g}, {s.steps} steps, {mode}, from the {s.start}'s best merge"


def search_settings(config) -> list[FineTuneSetting]:
    """The settings the fine-tuning attacks try: the default, and with ``--thorough`` one change at a time."""
    default = FineTuneSetting().resolved(config)
    if not config.thorough:
        return [default]
    # The other way to train: a LoRA when every weight trains; at LLM scale (a LoRA already) every weight may not fit
    # in memory, so a LoRA of four times the rank.
    other_rank = LORA_RANK_SEARCHED if not default.lora_rank else 4 * default.lora_rank
    return [  # the start's variant next to the default: graderase's direction depends on the training alone
        default,
        replace(default, start=DEFENDER_START),
        replace(default, rate_factor=1 / 3),
        replace(default, rate_factor=3.0),
        replace(default, steps=2 * default.steps),
        replace(default, lora_rank=other_rank),
    ]


@dataclass
class References:
    """What the attacker's examples reach without the release's weights, for one training setting."""

    data_only: ScoredModel  # the free-rider's own model fine-tuned on them
    distilled: ScoredModel  # the free-rider's own model fine-tuned on the protected model's answers to their prompts

    @property
    def better(self) -> ScoredModel:
        return max((self.data_only, self.distilled), key=_kept)


@dataclass
class FineTuningStart:
    examples: list  # the attacker's defender examples
    freerider: int  # the free-rider whose merges the attacks repair (the one of the free-rider start)
    starts: dict = field(default_factory=dict)  # start kind -> (MergeResult, its tensors), made when first needed
    references: dict = field(default_factory=dict)  # FineTuneSetting.training -> References

    @property
    def start(self) -> MergeResult:
        return self.starts[FREERIDER_START][0]

    @property
    def data_only(self) -> ScoredModel:
        return max((r.data_only for r in self.references.values()), key=_kept)

    @property
    def distilled(self) -> ScoredModel:
        return max((r.distilled for r in self.references.values()), key=_kept)

    @property
    def reference(self) -> ScoredModel:
        """What any release gives away to these examples, whatever its weights: the best reference of any setting."""
        return max((r.better for r in self.references.values()), key=_kept)


def _kept(scored: ScoredModel) -> float:
    return -math.inf if scored.defender_kept is None else scored.defender_kept


def attack_learning_rate(config, parameters: int, lora_rank: int | None = None) -> float:
    """``--attack-learning-rate``, or a rate an attacker would use for a model of ``parameters``: the toy world's 3e-4
    for small models, 1e-5 for full fine-tuning of an LLM, 2e-4 for a LoRA (``lora_rank``: default
    ``--attack-lora-rank``)."""
    if config.attack_learning_rate:
        return config.attack_learning_rate
    if config.attack_lora_rank if lora_rank is None else lora_rank:
        return 2e-4
    return 3e-4 if parameters < 100_000_000 else 1e-5


def fine_tune(model, ctx: AttackContext, examples: list, on_gradients=None, setting: FineTuneSetting | None = None):
    """The attacks' fine-tune: ``setting``'s steps (default ``attack_steps``) on ``examples`` (in place; returns the
    model in its dtype).

    Every weight trains in float32 (a bf16 model gets float32 master weights for the run: bf16 AdamW at an LLM's
    learning rate leaves most weights unchanged), or with a LoRA rank (``attack_lora_rank``, or the setting's) a LoRA
    on the frozen weights. ``on_gradients(model, lora)`` may change each step's gradients (``lora``: the LoRA's
    :class:`TrainedModel`, or None when every weight trains)."""
    config = ctx.config
    setting = (setting or FineTuneSetting()).resolved(config)
    parameters = sum(p.numel() for p in model.parameters())
    training = TrainingConfig(
        steps=setting.steps,
        learning_rate=setting.rate_factor * attack_learning_rate(config, parameters, setting.lora_rank),
        batch_size=min(16, len(examples)),
        max_length=256,
        seed=ctx.seed,
    )
    stored = next(model.parameters()).dtype
    lora = TrainedModel.lora(model, setting.lora_rank) if setting.lora_rank else None
    if lora is None:
        model.float()
    hook = None if on_gradients is None else (lambda unwrapped: on_gradients(unwrapped, lora))
    try:
        train_causal_lm(model, ctx.tokenizer, examples, training, accelerator=ctx.accelerator, progress=False, on_gradients=hook)
    finally:
        if lora is not None:
            lora.release()
    return model.to(stored)


def fine_tuning_work(stage: str, config, fine_tunes: int = 1, searched: bool = True) -> Work:
    """For ``--plan``: ``fine_tunes`` of the attacks' fine-tunes (see :func:`fine_tune`) per setting of the search
    (``searched``; else the default setting alone) and the scoring of each result."""
    settings = search_settings(config) if searched else search_settings(replace(config, thorough=False))
    return Work(
        stage,
        training_steps=fine_tunes * sum(s.steps for s in settings),
        tokens_per_step=min(16, config.attack_examples) * 256,
        lora=bool(config.attack_lora_rank),
        scorings=len(settings),
    )


def references_work(config) -> Work:
    """For ``--plan``: the start merges and the two references per training setting (see :class:`References`)."""
    settings = search_settings(config)
    trainings = {s.training: s.steps for s in settings}
    return Work(
        "fine-tuning attacks' start",
        merges=len({s.start for s in settings}),
        scorings=2 * len(trainings),
        training_steps=2 * sum(trainings.values()),
        tokens_per_step=min(16, config.attack_examples) * 256,
        lora=bool(config.attack_lora_rank),
    )


def shared_start(ctx: AttackContext) -> FineTuningStart:
    """The attacker's examples, the free-rider start merge and the references of every setting, made once per
    self-test for every fine-tuning attack."""
    return ctx.shared("finetuning", lambda: _start(ctx))


def attacker_examples(ctx: AttackContext, needed_by: str = "the fine-tuning attacks") -> list:
    """The attacker's few defender examples: the last ``attack_examples`` of the training data (away from the
    calibration set at its start)."""
    if not ctx.examples:
        raise ConfigError(
            f"{needed_by} need a few examples of the defender's task.",
            "Pass --train-data (the attacker's examples are taken from it), or leave the attacks that need examples out "
            "(--attacks realign,unmask,signrestore,lowrank).",
        )
    return list(ctx.examples)[-ctx.config.attack_examples :]


def _start(ctx: AttackContext) -> FineTuningStart:
    setup = FineTuningStart(examples=attacker_examples(ctx), freerider=0)
    start_merge(ctx, setup, FREERIDER_START)
    setup.freerider = setup.start.freerider
    taught = None
    for setting in search_settings(ctx.config):
        if setting.training in setup.references:
            continue
        rider = ctx.freeriders[setup.freerider].model
        # What the examples alone buy: the free-rider's own model fine-tuned on them the same way.
        data_only = ctx.scored(
            ctx.score_model(fine_tune(rider.load_model(device=ctx.device), ctx, setup.examples, setting=setting)), setup.freerider
        )
        # What the release gives away as a teacher, to the same prompts: no weight defense can stop it.
        if taught is None:
            taught = teacher_examples(ctx.protected.load_model(device=ctx.device), ctx.tokenizer, setup.examples)
        distilled = ctx.scored(
            ctx.score_model(fine_tune(rider.load_model(device=ctx.device), ctx, taught, setting=setting)), setup.freerider
        )
        setup.references[setting.training] = References(data_only, distilled)
    return setup


def start_merge(ctx: AttackContext, setup: FineTuningStart, kind: str) -> tuple[MergeResult, dict]:
    """The merge a setting starts from (made once): :data:`FREERIDER_START`, the protected merge that kept the most
    of the free-rider's own skill, or :data:`DEFENDER_START`, the one with the highest defender score among those
    that keep ``freerider_floor`` of it (of all, when none does). Scored on every prompt (not cut by the race)."""
    if kind not in setup.starts:
        candidates = [merge for merge in ctx.report.merges if merge.variant == "protected" and merge.prompts is None]
        if kind == FREERIDER_START:
            merge = max(candidates, key=lambda m: ((m.freerider_kept or 0.0), m.defender_score))
        else:
            merge, _ = attacker_best(
                candidates, ctx.config.freerider_floor, score=lambda m: m.defender_score, freerider_kept=lambda m: m.freerider_kept
            )
        setup.starts[kind] = (merge, ctx.merge(merge.method, merge.value, merge.freerider, merge.extra))
    return setup.starts[kind]


def teacher_examples(teacher, tokenizer, examples: list) -> list:
    """The examples' prompts with the teacher's greedy answers in place of theirs (as long as theirs allow: twice the
    longest, at most 256 new tokens; cut at the first newline when no given answer has one inside)."""
    import torch

    from ..training import Example

    lengths = [len(tokenizer(e.completion, add_special_tokens=False)["input_ids"]) for e in examples]
    cap = min(256, 2 * max(lengths, default=16) + 8)
    one_line = not any("\n" in e.completion.rstrip("\n") for e in examples)
    pad = padding_id(tokenizer)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    taught = []
    try:
        teacher.eval()
        for start in range(0, len(examples), 16):
            batch = examples[start : start + 16]
            encoded = tokenizer([e.prompt for e in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(teacher.device)
            with torch.no_grad():
                out = teacher.generate(**encoded, max_new_tokens=cap, do_sample=False, pad_token_id=pad)
            for example, row in zip(batch, out[:, encoded["input_ids"].shape[1] :]):
                text = tokenizer.decode(row, skip_special_tokens=True)
                if one_line and "\n" in text:
                    text = text[: text.index("\n") + (1 if example.completion.endswith("\n") else 0)]
                taught.append(Example(example.prompt, text))
    finally:
        tokenizer.padding_side = side
    return taught


def repair(ctx: AttackContext, name: str, on_gradients_for=None) -> AttackResult:
    """Fine-tune the start merge on the attacker's examples with every setting of the search and score each: the
    attack ``name``'s result, its best setting (the attacker's best, keeping the free-rider's skill when one does).

    ``on_gradients_for(setting)`` gives the ``on_gradients`` of that setting's fine-tune (see :func:`fine_tune`), or
    None. Each model is built from a copy of its start merge's tensors (on CPU a model shares memory with the tensors it
    is built from), so every fine-tune starts from the same merge, on CPU as on GPU.
    """
    setup = shared_start(ctx)
    tried = []
    for setting in search_settings(ctx.config):
        start, tensors = start_merge(ctx, setup, setting.start)
        model = model_from_state_dict(ctx.protected.config, {n: t.clone() for n, t in tensors.items()}, device=ctx.device)
        hook = on_gradients_for(setting) if on_gradients_for is not None else None
        scored = ctx.scored(ctx.score_model(fine_tune(model, ctx, setup.examples, on_gradients=hook, setting=setting)), start.freerider)
        tried.append((setting, start, scored))
    (setting, start, scored), _ = attacker_best(
        tried, ctx.config.freerider_floor, score=lambda t: _kept(t[2]), freerider_kept=lambda t: t[2].freerider_kept
    )
    result = fine_tuning_result(ctx, name, setup, scored, setting, start)
    if len(tried) > 1:
        result.details["search"] = [
            {
                "setting": s.label(ctx.config),
                "defender_kept": r.defender_kept,
                "freerider_kept": r.freerider_kept,
                "reference_kept": setup.references[s.training].better.defender_kept,
            }
            for s, _, r in tried
        ]
    return result


def fine_tuning_result(
    ctx: AttackContext,
    name: str,
    setup: FineTuningStart,
    scored: ScoredModel,
    setting: FineTuneSetting | None = None,
    start: MergeResult | None = None,
) -> AttackResult:
    """The result of a fine-tuning attack: credited only beyond the best reference (of any setting)."""
    setting = (setting or FineTuneSetting()).resolved(ctx.config)
    start = start or setup.start
    reference = setup.reference
    beyond = None if scored.defender_kept is None or reference.defender_kept is None else scored.defender_kept - reference.defender_kept
    parameters = sum(math.prod(spec.shape) for spec in ctx.protected.layout.values())
    details = {
        "beyond_data": beyond,
        "setup": {
            "start": {
                "method": start.method,
                "value": start.value,
                "freerider": start.freerider,
                "defender_kept": start.defender_kept,
                "freerider_kept": start.freerider_kept,
            },
            "examples": len(setup.examples),
            "steps": setting.steps,
            "learning_rate": setting.rate_factor * attack_learning_rate(ctx.config, parameters, setting.lora_rank),
            "lora_rank": setting.lora_rank,
            "data_only": to_dict(setup.data_only),
            "distilled": to_dict(setup.distilled),
        },
    }
    return AttackResult(name, scored, credited=beyond, details=details)


def describe_fine_tuning(what: str):
    """The card's sentence for a fine-tuning attack (``what`` it did to the gradients, if anything)."""

    def describe(result: AttackResult) -> str:
        setup = result.details["setup"]
        searched = f" (the best of {len(result.details['search'])} settings searched)" if result.details.get("search") else ""
        return (
            f"fine-tuned the best merge on {setup['examples']} defender examples for {setup['steps']} steps{what}{searched}; the "
            f"examples alone (free-rider fine-tuned the same way) reach {100 * setup['data_only']['defender_score']:.1f}"
            + (f", distilled from this model {100 * setup['distilled']['defender_score']:.1f}" if "distilled" in setup else "")
        )

    return describe
