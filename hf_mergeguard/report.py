"""Plain-text tables of a self-test report (what ``check``, ``protect`` and ``demo`` print)."""

from __future__ import annotations


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def coefficient_label(method: str, value) -> str:
    """``lambda=1``, ``density=0.5``, ``t=0.3``: a merge method's swept coefficient."""
    if value is None:
        return "-"
    names = {"task_arithmetic": "lambda", "linear": "w_def", "slerp": "t"}
    return f"{names.get(method, 'density')}={value:g}"


def _unfair(best: dict) -> str:
    return "*" if best.get("freerider_constraint_met") is False else ""


def format_report(report: dict) -> str:
    """The standalone scores, the attacker's best merge per method, and the gates."""
    lines = []
    tasks = report["tasks"]
    standalone = report["standalone"]
    with_original = "original" in standalone
    lines.append("Standalone (points):")
    header = f"  {'model':<12}" + "".join(f"{t:>14}" for t in tasks)
    lines.append(header)
    for name in ["base", "original", "protected"]:
        if name in standalone:
            label = {"base": "base (floor)", "protected": "protected" if with_original else "model"}.get(name, name)
            lines.append(f"  {label:<12}" + "".join(f"{100 * standalone[name][t]:>14.1f}" for t in tasks))
    lines.append("")
    lines.append("Attacker's best merge per method (defender's tasks, points; kept = share of the skill gain):")
    if with_original:
        lines.append(f"  {'method':<16}{'unprotected':>14}{'kept':>7}   {'protected':>12}{'kept':>7}  {'coefficient':<14}{'free-rider kept':>16}")
    else:
        lines.append(f"  {'method':<16}{'merged':>10}{'kept':>7}  {'coefficient':<14}{'free-rider kept':>16}")
    for method, variants in report["best"].items():
        prot = variants["protected"]
        if with_original:
            orig = variants["original"]
            lines.append(
                f"  {method:<16}{100 * orig['defender_score']:>14.1f}{_pct(orig['defender_kept']):>7}   "
                f"{100 * prot['defender_score']:>12.1f}{_pct(prot['defender_kept']):>7}  {coefficient_label(method, prot['value']):<14}"
                f"{_pct(prot['freerider_kept']) + _unfair(prot):>16}"
            )
        else:
            lines.append(
                f"  {method:<16}{100 * prot['defender_score']:>10.1f}{_pct(prot['defender_kept']):>7}  "
                f"{coefficient_label(method, prot['value']):<14}{_pct(prot['freerider_kept']) + _unfair(prot):>16}"
            )
    if any(_unfair(v["protected"]) for v in report["best"].values()):
        lines.append("  * no coefficient kept the free-rider's own skill (floor "
                     f"{_pct(report.get('config', {}).get('freerider_floor', 0.5))}): the merge shown wrecks it, and counts anyway")
    robustness = report.get("robustness")
    if robustness:
        lines.append("")
        lines.append("Adaptive attacks (the attacker's best result; defender's tasks, points):")
        for row in robustness["rows"]:
            lines.append(f"  {row['attack']:<11}{row['score']:>20}   defeats the protection: {'yes' if row['defeats'] else 'no'}")
        lines.append(f"  {robustness['sentence']}")
    lines.append("")
    for name, gate in report["gates"].items():
        verdict = "PASS" if gate["passed"] else "FAIL"
        if name == "standalone_drop":
            lines.append(f"Gate standalone drop: {gate['value']:.1f} points (allowed {gate['threshold']:g}) -> {verdict}")
        elif name == "adaptive_retention":
            lines.append(
                f"Gate adaptive attacks: worst {_pct(gate['value'])} ({gate.get('worst_attack')}) "
                f"(allowed {_pct(gate['threshold'])}) -> {verdict}"
            )
        else:
            lines.append(
                f"Gate merged retention: worst {_pct(gate['value'])} ({gate.get('worst_method')}) "
                f"(allowed {_pct(gate['threshold'])}) -> {verdict}"
                + (f" [{gate['note']}]" if gate.get("note") else "")
            )
    failed = [name for name, gate in report["gates"].items() if not gate["passed"]]
    reasons = {"standalone_drop": "the model lost its skill", "merged_retention": "merges keep the skill",
               "adaptive_retention": "an adaptive attack undoes the protection"}
    lines.append("Verdict: " + ("safe to release" if report["passed"] else "NOT safe to release: " + "; ".join(reasons.get(f, f) for f in failed)))
    return "\n".join(lines)
