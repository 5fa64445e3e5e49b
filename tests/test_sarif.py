"""``check --format sarif``: the report as SARIF 2.1.0, validated against the format's JSON schema.

``tests/data/sarif-schema-2.1.0.json`` is the SARIF 2.1.0 (rtm.5) schema as the npm package ``@microsoft/jest-sarif``
1.0.0-beta.0 ships it (``lib/schemas/sarif-2.1.0-rtm.5.json``, MIT). The CLI path runs in
``tests/test_selftest.py::test_check_unprotected_finetune_exits_1``."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from hf_mergeguard.cli.check import format_check
from hf_mergeguard.report.sarif import report_to_sarif
from hf_mergeguard.report.schema import SelfTestReport
from hf_mergeguard.report.table import format_report

DATA = Path(__file__).parent / "data"


def sarif_validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(json.loads((DATA / "sarif-schema-2.1.0.json").read_text()))


@pytest.fixture
def report():
    return SelfTestReport.from_dict(json.loads((DATA / "selftest_count.json").read_text()))


def test_a_failed_report_is_one_finding_per_merge_method_and_attack(report, tmp_path):
    model = tmp_path / "release"
    model.mkdir()
    log = report_to_sarif(report, model=str(model))
    sarif_validator().validate(log)
    results = log["runs"][0]["results"]
    # The fixture (MergeGuard at its defaults, toy world) fails all three gates: two merge methods keep more than
    # 0.25 of the gain (TA 0.80, DARE-TIES 0.58), five attacks are credited above it, the drop is 4.3 points.
    assert [r["ruleId"] for r in results] == ["MG001"] * 2 + ["MG002"] * 5 + ["MG003"]
    assert results[0]["message"]["text"] == (
        "A task_arithmetic merge (lambda=1.2) with toy-world/rev keeps 0.80 of the skill gain on toy_count (the gate allows 0.25)."
    )
    assert results[-1]["message"]["text"] == "The model lost 4.3 points of its own skill on toy_count (the gate allows 1.5)."
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results} == {f"{model.as_posix()}/config.json"}
    assert log["runs"][0]["invocations"][0]["exitCode"] == 1
    assert [rule["id"] for rule in log["runs"][0]["tool"]["driver"]["rules"]] == ["MG001", "MG002", "MG003"]

    # The validator is not a formality: a log without its version, or with a level SARIF does not have, is refused.
    for broken in ({k: v for k, v in log.items() if k != "version"}, copy.deepcopy(log)):
        broken.get("runs")[0]["results"][0]["level"] = "fatal" if "version" in broken else "error"
        with pytest.raises(jsonschema.ValidationError):
            sarif_validator().validate(broken)


def test_a_passed_report_has_no_findings_and_json_is_the_report(report):
    gates = {name: dataclasses.replace(gate, passed=True) for name, gate in report.gates.items()}
    passed = dataclasses.replace(report, gates=gates, passed=True)
    log = json.loads(format_check(passed, "sarif", model="my-org/my-model"))
    sarif_validator().validate(log)
    assert log["runs"][0]["results"] == [] and log["runs"][0]["invocations"][0]["exitCode"] == 0
    assert json.loads(format_check(report, "json", model="x")) == report.to_dict()
    assert format_check(report, "text", model="x") == format_report(report)  # the table check printed before --format


def test_an_unknown_format_is_refused_before_any_work(capsys, tmp_path):
    from hf_mergeguard import report_to_sarif as exported
    from hf_mergeguard.cli.main import main

    assert exported is report_to_sarif  # the Python API has what the CLI prints
    assert main(["check", str(tmp_path / "absent"), "--base", "b", "--tasks", "t", "--format", "xml"]) == 2
    err = capsys.readouterr().err
    assert "Unknown --format 'xml'" in err and "Use one of: text, json, sarif." in err
