"""``graderase`` (MergeGuard, section 7): estimate the defense's direction as v = -tau_G, tau_G the task vector of the
base fine-tuned on the attacker's few examples, and fine-tune the protected merge on those examples with each gradient
projected orthogonal to v (see ``finetuning``).

With ``--attack-lora-rank`` (what fits an 8B on one GPU) both fine-tunes are LoRAs: tau_G is the base's LoRA change
(on the decoder's linear weights), and the projection happens in the factors' space. A step of the factors (A, B)
moves W = W0 + s·B·A by J·(dA, dB) to first order, and ⟨v, J·x⟩ = ⟨Jᵀv, x⟩ with Jᵀv = (s·Bᵀv, s·v·Aᵀ); so taking
the factors' gradient off Jᵀv keeps each step's change of W orthogonal to v, as the full-weight projection does.
"""

from __future__ import annotations

import torch

from ..report.schema import AttackResult
from .base import AttackContext, AttackSpec, register_attack
from .finetuning import FineTuneSetting, describe_fine_tuning, fine_tune, fine_tuning_work, repair, shared_start


def estimated_defense_direction(ctx: AttackContext, examples: list, setting: FineTuneSetting | None = None) -> dict[str, torch.Tensor]:
    """v = -tau_G, in the model's dtype: the base fine-tuned the attacks' way (``setting``'s) on ``examples``, minus
    the base (only the tensors that moved: with a LoRA, the decoder's linear weights)."""
    base_model = ctx.base.load_model(device=ctx.device)
    base_state = {n: p.detach().clone() for n, p in base_model.named_parameters()}
    fine_tune(base_model, ctx, examples, setting=setting)
    direction = {}
    for name, param in base_model.named_parameters():
        difference = base_state.pop(name) - param.detach()  # one tensor at a time: never a third model-sized set
        if bool(difference.any()):
            direction[name] = difference
    return direction


def project_off(direction: dict[str, torch.Tensor]):
    """``on_gradients`` for :func:`fine_tune`: each step's gradient without its component along ``direction``."""
    norm2 = sum(float((v.double() ** 2).sum()) for v in direction.values())

    @torch.no_grad()
    def project(module, lora):
        if lora is None:  # every weight trains: project the weights' gradient
            params = dict(module.named_parameters())
            pairs = [(params[n].grad, v) for n, v in direction.items() if params[n].grad is not None]
            dot = sum(float((grad.double() * v.double()).sum()) for grad, v in pairs)
            for grad, v in pairs:
                grad -= (dot / max(norm2, 1e-30)) * v.to(grad.dtype)
            return
        images = []  # per factor: (factor, Jᵀv's part for it)
        for name, change in lora.changes.items():
            if change.lora_A is None or name not in direction:
                continue
            v = direction[name].to(change.lora_A.device, torch.float32)
            images += [(change.lora_A, change.scaling * (change.lora_B.T @ v)), (change.lora_B, change.scaling * (v @ change.lora_A.T))]
        dot = sum(float((factor.grad.double() * image.double()).sum()) for factor, image in images if factor.grad is not None)
        image_norm2 = sum(float((image.double() ** 2).sum()) for _, image in images)
        for factor, image in images:
            if factor.grad is not None:
                factor.grad -= (dot / max(image_norm2, 1e-30)) * image

    return project


def run_graderase(ctx: AttackContext) -> AttackResult:
    setup = shared_start(ctx)
    held = {}  # one direction at a time (model-sized): the search's settings that share a training come together

    def on_gradients_for(setting: FineTuneSetting):
        if setting.training not in held:
            held.clear()
            held[setting.training] = estimated_defense_direction(ctx, setup.examples, setting)
        return project_off(held[setting.training])

    return repair(ctx, "graderase", on_gradients_for)


register_attack(
    AttackSpec(
        name="graderase",
        run=run_graderase,
        rank=40,
        describe=describe_fine_tuning(", gradients projected off the estimated defense direction"),
        needs_examples=True,
        held_model_copies=1,  # the estimated defense direction
        work=lambda config, size: [
            fine_tuning_work("the graderase attack", config, fine_tunes=2)
        ],  # the direction, the repair (an upper bound: settings that share a training share the direction)
    )
)
