"""``recover``: fine-tune the protected merge on the attacker's few defender examples (see ``finetuning``)."""

from __future__ import annotations

from ..report.schema import AttackResult
from .base import AttackContext, AttackSpec, register_attack
from .finetuning import describe_fine_tuning, fine_tuning_work, repair


def run_recover(ctx: AttackContext) -> AttackResult:
    return repair(ctx, "recover")


register_attack(
    AttackSpec(
        name="recover",
        run=run_recover,
        rank=30,
        describe=describe_fine_tuning(""),
        needs_examples=True,
        work=lambda config, size: [fine_tuning_work("the recover attack", config)],
    )
)
