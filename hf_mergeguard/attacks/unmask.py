"""``unmask`` (MergeGuard, section 7): subtract the protected task vector again from the attacker's best merge of each
method, theta_merge - lambda * (theta_hat - theta_pre), lambda swept.

(The paper writes lambda * theta_hat; subtracting whole weights would scale the model down, so the task vector is what
is subtracted here.)
"""

from __future__ import annotations

from ..report.schema import AttackResult, to_dict
from ..report.scoring import attacker_best
from ..workload import Work
from .base import AttackContext, AttackSpec, register_attack

UNMASK_LAMBDAS = (0.1, 0.3, 0.5)


def run_unmask(ctx: AttackContext) -> AttackResult:
    def unmask_method(method: str) -> list[tuple[float, dict]]:
        start = ctx.report.best[method]["protected"]
        merged = ctx.merge(method, start.value, start.freerider, start.extra)
        scores = []
        for lam in UNMASK_LAMBDAS:
            tensors = {}
            for name, tensor in merged.items():
                tau_hat = ctx.protected.get(name).float() - ctx.base.get(name).float()
                tensors[name] = (tensor.float() - lam * tau_hat).to(tensor.dtype)
            scores.append((lam, ctx.score_tensors(tensors)))
        return scores

    methods = list(ctx.report.best)
    tried = []
    # One job per merge method (one merge, three scorings), split over the run's processes.
    for method, scores in zip(methods, ctx.map(methods, unmask_method, desc="unmask")):
        start = ctx.report.best[method]["protected"]
        tried += [(lam, ctx.scored(s, start.freerider, method=method, value=start.value)) for lam, s in scores]
    (lam, best), met = attacker_best(
        tried, ctx.config.freerider_floor, score=lambda t: t[1].defender_score, freerider_kept=lambda t: t[1].freerider_kept
    )
    best.freerider_constraint_met = met
    details = {"best_lambda": lam, "tried": [{"unmask_lambda": lam, **to_dict(scored)} for lam, scored in tried]}
    return AttackResult("unmask", best, credited=best.defender_kept, details=details)


register_attack(
    AttackSpec(
        name="unmask",
        run=run_unmask,
        rank=20,
        describe=lambda result: (
            "subtracted lambda x the protected task vector from its best merge of each method "
            f"(lambda {', '.join(f'{v:g}' for v in UNMASK_LAMBDAS)})"
        ),
        work=lambda config, size: [Work("unmask", merges=size.methods, scorings=size.methods * len(UNMASK_LAMBDAS))],
    )
)
