"""A self-test report as SARIF 2.1.0 (``check --format sarif``), so that code-scanning UIs (GitHub's, GitLab's) show
the verdict next to the model folder it was run on.

One rule per gate. A gate that fails gives one result per finding, an ``error``: each merge method whose attacker's
best merge keeps more of the skill than the gate allows, each adaptive attack credited above it, the standalone drop.
A report that passes has no results. Every result points at the model's ``config.json`` (a Hub repo id is given as
it is), as a scanner's results point at a file.
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from .schema import SelfTestReport
from .table import coefficient_label

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/hf-mergeguard/hf-mergeguard"

# gate -> (rule id, short name, what it means)
RULES = {
    "merged_retention": (
        "MG001",
        "merge-keeps-skill",
        "A free-rider's mergekit merge of the model keeps more of its skill gain over the base than the gate allows: "
        "the skill can be taken by merging.",
    ),
    "adaptive_retention": (
        "MG002",
        "adaptive-attack-recovers-skill",
        "An adaptive attack (one that knows the defense) is credited with more of the skill gain than the gate allows.",
    ),
    "standalone_drop": (
        "MG003",
        "protection-costs-skill",
        "The protected model lost more of its own skill than the gate allows.",
    ),
}


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _findings(report: SelfTestReport, gate_name: str) -> list[str]:
    """The messages of one failed gate, a finding each."""
    gate = report.gates[gate_name]
    allowed = f"the gate allows {_share(gate.threshold)}"
    tasks = ", ".join(report.tasks)
    if gate_name == "merged_retention":
        if gate.note:
            return [f"Nothing to protect: {gate.note}."]
        found = []
        for method, variants in report.best.items():
            best = variants["protected"]
            if best.defender_kept is not None and best.defender_kept > gate.threshold:
                label = coefficient_label(method, best.value, best.extra)
                riders = report.sources.freeriders
                rider = riders[best.freerider].model if best.freerider < len(riders) else f"free-rider {best.freerider}"
                found.append(
                    f"A {method} merge ({label}) with {rider} keeps {_share(best.defender_kept)} of the skill gain on {tasks} ({allowed})."
                )
        return found or [f"The attacker's best merge keeps {_share(gate.value)} of the skill gain on {tasks} ({allowed})."]
    if gate_name == "adaptive_retention" and report.robustness is not None:
        return [
            f"The {name} attack is credited with {_share(result.credited)} of the skill gain on {tasks} ({allowed})."
            for name, result in report.robustness.attacks.items()
            if result.defeats
        ] or [f"An adaptive attack is credited with {_share(gate.value)} of the skill gain ({allowed})."]
    return [f"The model lost {gate.value:.1f} points of its own skill on {tasks} (the gate allows {gate.threshold:g})."]


def _location(model: str) -> dict:
    path = Path(model)
    uri = (path / "config.json").as_posix() if path.is_dir() else model
    return {"physicalLocation": {"artifactLocation": {"uri": uri}}}


def report_to_sarif(report: SelfTestReport, *, model: str | None = None) -> dict:
    """The SARIF log of ``report``; ``model`` is what the results point at (default: the report's model)."""
    model = model or report.sources.protected
    rules = [
        {
            "id": rule_id,
            "name": name,
            "shortDescription": {"text": name.replace("-", " ")},
            "fullDescription": {"text": text},
            "defaultConfiguration": {"level": "error"},
        }
        for rule_id, name, text in RULES.values()
    ]
    index = {gate: position for position, gate in enumerate(RULES)}
    results = [
        {
            "ruleId": RULES[gate][0],
            "ruleIndex": index[gate],
            "level": "error",
            "message": {"text": message},
            "locations": [_location(model)],
        }
        for gate in RULES
        if gate in report.gates and not report.gates[gate].passed
        for message in _findings(report, gate)
    ]
    run = {
        "tool": {"driver": {"name": "hf-mergeguard", "version": __version__, "informationUri": INFORMATION_URI, "rules": rules}},
        "invocations": [{"executionSuccessful": True, "exitCode": 0 if report.passed else 1}],
        "results": results,
        "properties": {
            "passed": report.passed,
            "command": report.command,
            "tasks": report.tasks,
            "gates": {name: {"value": g.value, "threshold": g.threshold, "passed": g.passed} for name, g in report.gates.items()},
        },
    }
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
