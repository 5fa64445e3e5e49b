"""``graderase`` (MergeGuard, section 7): estimate the defense's direction as v = -tau_G, tau_G the task vector of the
base fine-tuned on the attacker's few examples, and fine-tune the protected merge on those examples with each gradient
projected orthogonal to v (see ``finetuning``)."""

from __future__ import annotations

from ..report.schema import AttackResult
from .base import AttackContext, AttackSpec, register_attack
from .finetuning import describe_fine_tuning, fine_tune, repair, shared_start


def run_graderase(ctx: AttackContext) -> AttackResult:
    setup = shared_start(ctx)
    base_model = ctx.base.load_model(device=ctx.device)
    base_state = {n: p.detach().clone() for n, p in base_model.named_parameters()}
    fine_tune(base_model, ctx, setup.examples)
    disturbance = {n: (base_state[n] - p.detach()) for n, p in base_model.named_parameters()}  # v = -tau_G
    del base_model, base_state  # only the direction is needed from here on (one model-sized tensor set, not three)
    norm2 = sum(float((v.double() ** 2).sum()) for v in disturbance.values())

    def project(module):
        params = dict(module.named_parameters())
        dot = sum(float((params[n].grad.double() * v.double()).sum()) for n, v in disturbance.items() if params[n].grad is not None)
        for n, v in disturbance.items():
            if params[n].grad is not None:
                params[n].grad -= (dot / max(norm2, 1e-30)) * v.to(params[n].grad.dtype)

    return repair(ctx, "graderase", on_gradients=project)


register_attack(
    AttackSpec(
        name="graderase",
        run=run_graderase,
        rank=40,
        describe=describe_fine_tuning(", gradients projected off the estimated defense direction"),
        needs_examples=True,
        held_model_copies=1,  # the estimated defense direction
    )
)
