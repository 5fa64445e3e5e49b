"""``recover``: fine-tune the protected merge on the attacker's few defender examples (see ``finetuning``)."""

from __future__ import annotations

from ..io.hf_models import model_from_state_dict
from ..report.schema import AttackResult
from .base import AttackContext, AttackSpec, register_attack
from .finetuning import describe_fine_tuning, fine_tune, fine_tuning_result, shared_start


def run_recover(ctx: AttackContext) -> AttackResult:
    setup = shared_start(ctx)
    # The model shares memory with the start merge's tensors (no copy), so this fine-tune changes them in place and
    # graderase, which runs next, starts from the changed weights: kept as measured until the LLM-scale work fixes it.
    model = model_from_state_dict(ctx.protected.config, setup.merged, device=ctx.device)
    scored = ctx.scored(ctx.score_model(fine_tune(model, ctx, setup.examples)), setup.start.freerider)
    return fine_tuning_result(ctx, "recover", setup, scored)


register_attack(
    AttackSpec(
        name="recover",
        run=run_recover,
        rank=30,
        describe=describe_fine_tuning(""),
        needs_examples=True,
    )
)
