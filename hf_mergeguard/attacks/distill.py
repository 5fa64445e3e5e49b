"""``distill``: the protected model as a teacher. The free-rider's own model is fine-tuned on the protected model's
answers to the attacker's prompts, with the same budget as the fine-tuning attacks (see ``finetuning``).

A reference, not an attack on the weights: any model that answers well teaches, and no weight defense can stop it.
It is reported next to "the examples alone", is never credited against the defense, and the fine-tuning attacks are
credited only beyond the better of the two.
"""

from __future__ import annotations

from ..report.schema import AttackResult, to_dict
from .base import AttackContext, AttackSpec, register_attack
from .finetuning import shared_start


def run_distill(ctx: AttackContext) -> AttackResult:
    setup = shared_start(ctx)
    details = {"reference": True, "examples": len(setup.examples), "steps": ctx.config.attack_steps, "data_only": to_dict(setup.data_only)}
    return AttackResult("distill", setup.distilled, credited=None, details=details)


register_attack(
    AttackSpec(
        name="distill",
        run=run_distill,
        rank=25,
        describe=lambda result: (
            f"a reference, not counted: the free-rider's model fine-tuned on this model's answers to {result.details['examples']} "
            f"defender prompts for {result.details['steps']} steps (what any released model gives away as a teacher); the "
            f"examples alone reach {100 * result.details['data_only']['defender_score']:.1f}"
        ),
        needs_examples=True,
        work=None,  # made with the fine-tuning attacks' start (the plan counts it there)
    )
)
