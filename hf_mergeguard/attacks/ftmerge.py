"""``ftmerge``: fine-tune the release on the free-rider's own task, holding the defender's behaviour with a KL term,
then merge.

A free-rider with data of his own task need not merge the release as it is: he can first train his skill into it,
keeping the defender's outputs on the defender's prompts (KL to the release, on the attacker's examples), and then
merge that model with his own fine-tune. Fine-tuning moves the weights a defense placed (a trap's sensitive
directions, a negation's chosen entries) while the KL term holds the skill, so what a defense does to merges may
not survive it. The data: up to :data:`RIDER_ROWS` rows of the free-rider's task's training split, shown as the task
shows them (lm-eval's ``doc_to_text``, ``target_delimiter``, ``doc_to_target``); a task without a training split
cannot be attacked this way, and the report says so.

The loss per step: the cross-entropy of a batch of the free-rider's rows plus ``KL_WEIGHT`` x KL(release || model)
on a batch of the attacker's defender examples (the release's next-token distributions at their answer tokens,
computed once). Every weight trains in float32 for ``--attack-steps`` steps at the attacks' learning rate; each
process runs the same steps (the model is scored, then merged, on every process alike).

The merges of the self-test with the free-rider's own model are what counts, credited like the fine-tuning attacks:
only beyond the better of the examples alone and distillation (it uses the same defender examples). The fine-tuned
release alone is reported, not counted: that is continued fine-tuning of a working model, which, like distillation,
no weight defense that leaves the model usable can stop.
"""

from __future__ import annotations

import torch

from ..io.hf_models import model_state_dict
from ..io.sources import StateDictSource
from ..losses import mean_token_loss
from ..memory import finetune_memory
from ..report.schema import AttackResult
from ..report.table import percent
from ..training import collate, encode_examples, padding_id
from ..workload import Work
from .base import AttackContext, AttackSpec, matrix_attack_result, register_attack
from .finetuning import attack_learning_rate, shared_start

RIDER_ROWS = 512  # of the free-rider's own training data
KL_WEIGHT = 1.0
BATCH = 16


def rider_examples(ctx: AttackContext, freerider: int) -> tuple[list, str | None]:
    """The free-rider's own training rows (from his first task with a training split), and that task."""
    for task in ctx.freeriders[freerider].tasks:
        rows = ctx.evaluator.training_examples(task, RIDER_ROWS, ctx.tokenizer)
        if rows:
            return rows, task
    return [], None


def run_ftmerge(ctx: AttackContext) -> AttackResult:
    setup = shared_start(ctx)
    freerider = setup.freerider
    rows, task = rider_examples(ctx, freerider)
    if not rows:
        tasks = ", ".join(ctx.freeriders[freerider].tasks) or "none"
        reason = f"the free-rider's task(s) ({tasks}) have no training split to fine-tune on"
        result = matrix_attack_result("ftmerge", ctx, ctx.report, {"applies": False, "reason": reason})  # the plain merges
        result.credited = None
        return result
    model = ctx.protected.load_model(device=ctx.device).float()
    losses = _train(ctx, model, rows, setup.examples)
    stored = next(iter(ctx.protected.layout.values())).dtype
    tuned = StateDictSource(
        {n: t.to("cpu", stored) for n, t in model_state_dict(model).items()}, ctx.protected.config, source="fine-tuned release"
    )
    alone = ctx.scored(ctx.score_model(model.to(stored)), freerider)
    del model
    merged = matrix_attack_result("ftmerge", ctx, ctx.merge_matrix(tuned), {})
    best = merged.best
    reference = setup.reference
    beyond = None if best.defender_kept is None or reference.defender_kept is None else best.defender_kept - reference.defender_kept
    details = {
        "applies": True,
        "freerider_task": task,
        "freerider_rows": len(rows),
        "examples": len(setup.examples),
        "steps": ctx.config.attack_steps,
        "loss_first_last": [losses[0], losses[-1]],
        # Reported, not counted (see the module's docstring).
        "alone": {"defender_kept": alone.defender_kept, "freerider_kept": alone.freerider_kept, "scores": alone.scores},
        "beyond_data": beyond,
        "reference_kept": reference.defender_kept,
        **{key: merged.details[key] for key in ("standalone", "per_method")},
    }
    return AttackResult("ftmerge", best, credited=beyond, details=details)


def _train(ctx: AttackContext, model, rows: list, defender_examples: list) -> list[float]:
    """``attack_steps`` AdamW steps of cross-entropy on ``rows`` plus the KL term on ``defender_examples``; the losses."""
    tokenizer = ctx.tokenizer
    pad = padding_id(tokenizer)
    rider = encode_examples(tokenizer, rows, max_length=256)
    held = encode_examples(tokenizer, defender_examples, max_length=256)
    held_batch = {k: v.to(model.device) for k, v in collate(held, pad).items()}
    answer = held_batch["labels"][:, 1:] != -100  # the positions whose next token is an answer token
    model.eval()
    with torch.no_grad():  # the release's distributions there, once (the model is still the release), a batch at a time
        release = torch.cat(
            [
                torch.log_softmax(
                    model(input_ids=held_batch["input_ids"][i : i + BATCH], attention_mask=held_batch["attention_mask"][i : i + BATCH])
                    .logits[:, :-1]
                    .float(),
                    dim=-1,
                )[answer[i : i + BATCH]]
                for i in range(0, len(held), BATCH)
            ]
        )
    rows_of = torch.arange(len(held), device=answer.device).unsqueeze(1).expand_as(answer)[answer]  # the example of each answer position
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=attack_learning_rate(ctx.config, parameters, 0), weight_decay=0.0)
    generator = torch.Generator().manual_seed(ctx.seed)
    model.train()
    losses = []
    for _ in range(ctx.config.attack_steps):
        picked = torch.randperm(len(rider), generator=generator)[: min(BATCH, len(rider))].tolist()
        batch = {k: v.to(model.device) for k, v in collate([rider[i] for i in picked], pad).items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        task_loss = mean_token_loss(out, batch["labels"])
        # In order: the student's answer positions then come in the order of the release's.
        chosen = torch.randperm(len(held), generator=generator)[: min(BATCH, len(held))].sort().values
        keep = torch.isin(rows_of, chosen.to(rows_of.device))
        student = model(input_ids=held_batch["input_ids"][chosen], attention_mask=held_batch["attention_mask"][chosen]).logits[:, :-1]
        student = torch.log_softmax(student.float(), dim=-1)[answer[chosen]]
        teacher = release[keep.to(release.device)]
        kl = torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
        loss = task_loss + KL_WEIGHT * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _describe(result: AttackResult) -> str:
    d = result.details
    if not d.get("applies", True):
        return f"not applicable: {d['reason']}"
    return (
        f"fine-tuned this model for {d['steps']} steps on {d['freerider_rows']} rows of the free-rider's own task "
        f"({d['freerider_task']}), holding its outputs on {d['examples']} defender prompts (KL), then merged it with the "
        f"free-rider's model by every method; alone (continued fine-tuning, not counted) it keeps {percent(d['alone']['defender_kept'])} "
        f"of this model's gain and {percent(d['alone']['freerider_kept'])} of the free-rider's"
    )


register_attack(
    AttackSpec(
        name="ftmerge",
        run=run_ftmerge,
        rank=35,
        describe=_describe,
        needs_examples=True,
        default=False,  # a fine-tune and a merge matrix more: --thorough or --attacks ftmerge
        # A float32 fine-tune of every weight, whatever --attack-lora-rank (the merges need a changed model).
        memory=lambda config, shape, stored_bytes: finetune_memory(
            shape, weight_bytes=4, tokens=2 * BATCH * 256, checkpointing=False, stage="the ftmerge attack"
        ),
        fits_with="--attacks without ftmerge (it fine-tunes every weight in float32), or a GPU with more memory",
        work=lambda config, size: [
            Work("ftmerge (fine-tune)", training_steps=config.attack_steps, tokens_per_step=2 * BATCH * 256, scorings=1),
            Work("ftmerge (merges)", raced=list(size.groups)),
        ],
    )
)
