"""Plain-text tables of a self-test report (what ``check``, ``protect``, ``attack`` and ``demo`` print), and the few
phrases the model card shares with them."""

from __future__ import annotations

from .schema import AttackResult, Robustness, SelfTestReport

GATE_REASONS = {
    "standalone_drop": "the model lost its skill",
    "merged_retention": "merges keep the skill",
    "adaptive_retention": "an adaptive attack undoes the protection",
}


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


EXTRA_LABELS = {"rider_weight": "w_fr", "defender_weight": "w_def", "lambda": "lambda", "seed": "seed+"}


def coefficient_label(method: str, value, extra: dict | None = None) -> str:
    """``lambda=1``, ``density=0.5``, ``t=0.3``: a merge method's swept coefficient (``density=0.5 w_fr=0.5``, with
    what ``--thorough`` varies besides it)."""
    from ..attacks.merges import get_merge_method

    label = "-" if value is None else f"{get_merge_method(method).label}={value:g}"
    for key, extra_value in (extra or {}).items():
        label += f" {EXTRA_LABELS.get(key, key)}" + (f"{extra_value:g}" if key == "seed" else f"={extra_value:g}")
    return label


def attack_score(result: AttackResult) -> str:
    """``97.0 (93% kept)``: the defender's score of the attacker's best result, and the share of the gain it keeps."""
    return f"{100 * result.best.defender_score:.1f} ({percent(result.best.defender_kept)} kept)"


def robustness_sentence(robustness: Robustness) -> str:
    """One sentence: which attacks defeat the protection, or that none did."""
    defeated = robustness.defeated_by
    if defeated:
        return (
            f"{', '.join(defeated)} defeat{'s' if len(defeated) == 1 else ''} this protection: the attacker's merge keeps more than "
            f"{100 * robustness.threshold:.0f}% of this model's skill gain. Do not rely on it against a free-rider who knows the method."
        )
    return (
        f"None of the {len(robustness.attacks)} adaptive attacks kept more than {100 * robustness.threshold:.0f}% of this model's "
        "skill gain in a merge (fine-tuning attacks: beyond what their examples alone teach)."
    )


def _unfair(best) -> str:
    return "*" if best.freerider_constraint_met is False else ""


def free_ride_sentence(ride: dict) -> str:
    """The headline: the most of both skills one merge of the protected model keeps."""
    where = f"{ride['method']}, {coefficient_label(ride['method'], ride['value'])}"
    return (
        f"Free ride (the most of both skills one merge keeps): {percent(ride['free_ride'])} ({where}): it keeps "
        f"{percent(ride['defender_kept'])} of this model's skill gain and {percent(ride['freerider_kept'])} of the free-rider's own."
    )


SKILL_LOSS_MARGIN = 3.0  # points past the standalone gate where the training, not the merges, is the first thing to read


def skill_loss_warning(report: SelfTestReport) -> str | None:
    """A plain first sentence when protection cost the model clearly more of its own skill than the gate allows. After a
    stage that trained (the trap, MergeGuard's stage 1) the training data's format or the training options are the
    likely cause; either way the merge figures matter less."""
    gate = report.gates.get("standalone_drop")
    if gate is None or gate.value is None or gate.value <= gate.threshold + SKILL_LOSS_MARGIN:
        return None
    lost = f"The protected model lost {gate.value:.1f} points of its own skill (the gate allows {gate.threshold:g})."
    trained = any(p.details.get("training") or p.details.get("stage1") for p in report.protection or [])
    if not trained:
        return f"{lost} No stage of this protection trained: its edit costs this; its options are where to look."
    data = report.inputs.train_data if report.inputs is not None else None
    rows = f" The training rows were {data['description']}." if data else ""
    return (
        f"{lost}{rows} Check first that the rows are the model's own data in the format its task shows (--train-format), "
        "then the training options (--steps, --learning-rate); the merge figures of a model that lost its skill say little."
    )


def format_report(report: SelfTestReport) -> str:
    """The standalone scores, the attacker's best merge per method, the adaptive attacks, and the gates (after a plain
    warning first when the protected model lost its own skill: :func:`skill_loss_warning`)."""
    lines = []
    warning = skill_loss_warning(report)
    if warning:
        lines += [f"WARNING: {warning}", ""]
    tasks = report.tasks
    standalone = report.standalone
    with_original = report.with_original
    lines.append("Standalone (points):")
    lines.append(f"  {'model':<12}" + "".join(f"{t:>14}" for t in tasks))
    for name in ["base", "original", "protected"]:
        if name in standalone:
            label = {"base": "base (floor)", "protected": "protected" if with_original else "model"}.get(name, name)
            lines.append(f"  {label:<12}" + "".join(f"{100 * standalone[name][t]:>14.1f}" for t in tasks))
    lines.append("")
    lines.append("Attacker's best merge per method (defender's tasks, points; kept = share of the skill gain):")
    if with_original:
        lines.append(
            f"  {'method':<16}{'unprotected':>14}{'kept':>7}   {'protected':>12}{'kept':>7}  {'coefficient':<14}{'free-rider kept':>16}"
            f"{'free ride':>11}"
        )
    else:
        lines.append(f"  {'method':<16}{'merged':>10}{'kept':>7}  {'coefficient':<14}{'free-rider kept':>16}{'free ride':>11}")
    for method, variants in report.best.items():
        prot = variants["protected"]
        rider = percent(prot.freerider_kept) + _unfair(prot)
        coefficient = coefficient_label(method, prot.value, prot.extra)
        protected = f"{percent(prot.defender_kept):>7}  {coefficient:<14}{rider:>16}{percent(prot.free_ride):>11}"
        if with_original:
            orig = variants["original"]
            unprotected = f"{100 * orig.defender_score:>14.1f}{percent(orig.defender_kept):>7}"
            lines.append(f"  {method:<16}{unprotected}   {100 * prot.defender_score:>12.1f}{protected}")
        else:
            lines.append(f"  {method:<16}{100 * prot.defender_score:>10.1f}{protected}")
    if any(_unfair(v["protected"]) for v in report.best.values()):
        lines.append(
            "  * no coefficient kept the free-rider's own skill (floor "
            f"{percent(report.config.get('freerider_floor', 0.5))}): the merge shown wrecks it, and counts anyway"
        )
    if report.free_ride:
        lines.append(f"  {free_ride_sentence(report.free_ride)}")
    if report.robustness:
        lines.append("")
        lines.append("Adaptive attacks (the attacker's best result; defender's tasks, points):")
        for name, result in report.robustness.attacks.items():
            lines.append(f"  {name:<11}{attack_score(result):>20}   defeats the protection: {'yes' if result.defeats else 'no'}")
        lines.append(f"  {robustness_sentence(report.robustness)}")
    lines.append("")
    for name, gate in report.gates.items():
        verdict = "PASS" if gate.passed else "FAIL"
        if name == "standalone_drop":
            lines.append(f"Gate standalone drop: {gate.value:.1f} points (allowed {gate.threshold:g}) -> {verdict}")
        elif name == "adaptive_retention":
            lines.append(
                f"Gate adaptive attacks: worst {percent(gate.value)} ({gate.worst_attack}) (allowed {percent(gate.threshold)}) -> {verdict}"
            )
        else:
            lines.append(
                f"Gate merged retention: worst {percent(gate.value)} ({gate.worst_method}) (allowed {percent(gate.threshold)}) -> {verdict}"
                + (f" [{gate.note}]" if gate.note else "")
            )
    failed = report.failed_gates()
    lines.append(
        "Verdict: " + ("safe to release" if report.passed else "NOT safe to release: " + "; ".join(GATE_REASONS.get(f, f) for f in failed))
    )
    return "\n".join(lines)
