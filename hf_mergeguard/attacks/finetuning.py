"""What the fine-tuning attacks (``recover``, ``graderase``) share: the merge they start from, the attacker's few
examples, and what those examples teach on their own.

The start is the protected merge that kept the most of the free-rider's own skill (the one worth repairing). A few
examples teach a skill by themselves, so the free-rider's own model is fine-tuned on the same examples the same way;
and any released model is a teacher, so it is also fine-tuned the same way on the protected model's own answers to
those prompts (distillation, which no weight defense can stop). Only what an attack reaches *beyond* the better of
the two is credited to it (``beyond_data``) and can make it a defeat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..io.hf_models import model_from_state_dict
from ..report.schema import AttackResult, MergeResult, ScoredModel, to_dict
from ..trained_change import TrainedModel
from ..training import TrainingConfig, train_causal_lm
from ..workload import Work
from .base import AttackContext


@dataclass
class FineTuningStart:
    start: MergeResult  # the protected merge they repair
    merged: dict  # its tensors
    examples: list  # the attacker's defender examples
    data_only: ScoredModel  # the free-rider's own model fine-tuned on them
    distilled: ScoredModel  # the free-rider's own model fine-tuned on the protected model's answers to their prompts

    @property
    def reference(self) -> ScoredModel:
        """What any release gives away to these examples, whatever its weights: the better of the two references."""
        return max((self.data_only, self.distilled), key=lambda r: -math.inf if r.defender_kept is None else r.defender_kept)


def attack_learning_rate(config, parameters: int) -> float:
    """``--attack-learning-rate``, or a rate an attacker would use for a model of ``parameters``: the toy world's 3e-4
    for small models, 1e-5 for full fine-tuning of an LLM, 2e-4 for a LoRA."""
    if config.attack_learning_rate:
        return config.attack_learning_rate
    if config.attack_lora_rank:
        return 2e-4
    return 3e-4 if parameters < 100_000_000 else 1e-5


def fine_tune(model, ctx: AttackContext, examples: list, on_gradients=None):
    """The attacks' fine-tune: ``attack_steps`` steps on ``examples`` (in place; returns the model in its dtype).

    Every weight trains in float32 (a bf16 model gets float32 master weights for the run: bf16 AdamW at an LLM's
    learning rate leaves most weights unchanged), or with ``attack_lora_rank`` a LoRA on the frozen weights.
    ``on_gradients(model, lora)`` may change each step's gradients (``lora``: the LoRA's :class:`TrainedModel`, or
    None when every weight trains)."""
    config = ctx.config
    training = TrainingConfig(
        steps=config.attack_steps,
        learning_rate=attack_learning_rate(config, sum(p.numel() for p in model.parameters())),
        batch_size=min(16, len(examples)),
        max_length=256,
        seed=ctx.seed,
    )
    stored = next(model.parameters()).dtype
    lora = TrainedModel.lora(model, config.attack_lora_rank) if config.attack_lora_rank else None
    if lora is None:
        model.float()
    hook = None if on_gradients is None else (lambda unwrapped: on_gradients(unwrapped, lora))
    try:
        train_causal_lm(model, ctx.tokenizer, examples, training, accelerator=ctx.accelerator, progress=False, on_gradients=hook)
    finally:
        if lora is not None:
            lora.release()
    return model.to(stored)


def fine_tuning_work(stage: str, config, fine_tunes: int = 1) -> Work:
    """For ``--plan``: ``fine_tunes`` of the attacks' fine-tunes (see :func:`fine_tune`) and the scoring of the result."""
    return Work(
        stage,
        training_steps=fine_tunes * config.attack_steps,
        tokens_per_step=min(16, config.attack_examples) * 256,
        lora=bool(config.attack_lora_rank),
        scorings=1,
    )


def shared_start(ctx: AttackContext) -> FineTuningStart:
    """The start merge and the data-only reference, made once per self-test for every fine-tuning attack."""
    return ctx.shared("finetuning", lambda: _start(ctx))


def _start(ctx: AttackContext) -> FineTuningStart:
    if not ctx.examples:
        raise ConfigError(
            "The graderase and recover attacks need a few examples of the defender's task.",
            "Pass --train-data (the attacker's examples are taken from it), or leave those attacks out (--attacks realign,unmask).",
        )
    examples = list(ctx.examples)[-ctx.config.attack_examples :]  # the end of the data: away from the calibration set
    candidates = [merge for merge in ctx.report.merges if merge.variant == "protected" and merge.prompts is None]
    start = max(candidates, key=lambda merge: ((merge.freerider_kept or 0.0), merge.defender_score))
    merged = ctx.merge(start.method, start.value, start.freerider, start.extra)
    # What the examples alone buy: the free-rider's own model fine-tuned on them the same way.
    rider = ctx.freeriders[start.freerider].model
    data_only = ctx.scored(ctx.score_model(fine_tune(rider.load_model(device=ctx.device), ctx, examples)), start.freerider)
    # What the release gives away as a teacher, to the same prompts: no weight defense can stop it.
    taught = teacher_examples(ctx.protected.load_model(device=ctx.device), ctx.tokenizer, examples)
    distilled = ctx.scored(ctx.score_model(fine_tune(rider.load_model(device=ctx.device), ctx, taught)), start.freerider)
    return FineTuningStart(start, merged, examples, data_only, distilled)


def teacher_examples(teacher, tokenizer, examples: list) -> list:
    """The examples' prompts with the teacher's greedy answers in place of theirs (as long as theirs allow: twice the
    longest, at most 256 new tokens; cut at the first newline when no given answer has one inside)."""
    import torch

    from ..training import Example

    lengths = [len(tokenizer(e.completion, add_special_tokens=False)["input_ids"]) for e in examples]
    cap = min(256, 2 * max(lengths, default=16) + 8)
    one_line = not any("\n" in e.completion.rstrip("\n") for e in examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
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


def repair(ctx: AttackContext, name: str, on_gradients=None) -> AttackResult:
    """Fine-tune the start merge on the attacker's examples (``on_gradients(model, lora)`` may change each step's
    gradients, see :func:`fine_tune`) and score it: the attack ``name``'s result.

    The model is built from a copy of the start merge's tensors (on CPU a model shares memory with the tensors it is
    built from), so every fine-tuning attack starts from the same merge, on CPU as on GPU.
    """
    setup = shared_start(ctx)
    model = model_from_state_dict(ctx.protected.config, {n: t.clone() for n, t in setup.merged.items()}, device=ctx.device)
    scored = ctx.scored(ctx.score_model(fine_tune(model, ctx, setup.examples, on_gradients=on_gradients)), setup.start.freerider)
    return fine_tuning_result(ctx, name, setup, scored)


def fine_tuning_result(ctx: AttackContext, name: str, setup: FineTuningStart, scored: ScoredModel) -> AttackResult:
    """The result of a fine-tuning attack: credited only beyond what the examples alone reach."""
    reference = setup.reference
    beyond = None if scored.defender_kept is None or reference.defender_kept is None else scored.defender_kept - reference.defender_kept
    details = {
        "beyond_data": beyond,
        "setup": {
            "start": {
                "method": setup.start.method,
                "value": setup.start.value,
                "freerider": setup.start.freerider,
                "defender_kept": setup.start.defender_kept,
                "freerider_kept": setup.start.freerider_kept,
            },
            "examples": len(setup.examples),
            "steps": ctx.config.attack_steps,
            "learning_rate": attack_learning_rate(ctx.config, sum(math.prod(spec.shape) for spec in ctx.protected.layout.values())),
            "lora_rank": ctx.config.attack_lora_rank,
            "data_only": to_dict(setup.data_only),
            "distilled": to_dict(setup.distilled),
        },
    }
    return AttackResult(name, scored, credited=beyond, details=details)


def describe_fine_tuning(what: str):
    """The card's sentence for a fine-tuning attack (``what`` it did to the gradients, if anything)."""

    def describe(result: AttackResult) -> str:
        setup = result.details["setup"]
        return (
            f"fine-tuned the best merge on {setup['examples']} defender examples for {setup['steps']} steps{what}; the examples "
            f"alone (free-rider fine-tuned the same way) reach {100 * setup['data_only']['defender_score']:.1f}"
            + (f", distilled from this model {100 * setup['distilled']['defender_score']:.1f}" if "distilled" in setup else "")
        )

    return describe
