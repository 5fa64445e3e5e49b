"""Security: untrusted code never runs by accident, and no secret (Hub token, owner's key) leaves the machine.

- Model-written code (HumanEval-style tasks) runs only with --allow-code-eval, in a child process with no token in
  its environment, under a time limit that kills it and everything it started.
- Custom modeling/tokenizer code a checkpoint points to (``auto_map``) is never imported: trust_remote_code is off.
- A full protect + push: the token and the key's values appear in no output file, log, card or pushed file; the key
  is owner-only and beside (never inside) the release; the push holds exactly the release files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hf_mergeguard.cli.main import main

from fake_hub import GOOD_TOKEN

CODE_TASK = """task: toy_code
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
unsafe_code: true
output_type: generate_until
test_split: test
doc_to_text: prompt
doc_to_target: test
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 4
metric_list:
  - metric: !function utils.run_reference
    aggregation: mean
    higher_is_better: true
"""

# The "model-written code" under test is the reference program: what matters is where and how code runs.
CODE_UTILS = """import json, os, subprocess, sys, time

PROBE = {probe!r}
HANG = {hang!r}


def run_reference(references, predictions):
    seen = {{name: os.environ.get(name, "<none>") for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN",
                                                             "AWS_SECRET_ACCESS_KEY", "HF_ALLOW_CODE_EVAL")}}
    with open(PROBE, "w") as handle:
        json.dump(seen, handle)
    if os.path.exists(HANG):  # runaway code: starts a process of its own, then never returns
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(HANG, "w") as handle:
            handle.write(str(sleeper.pid))
        time.sleep(600)
    return 1.0
"""


@pytest.fixture
def code_task(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tmp_path / "code.jsonl").write_text(json.dumps({"prompt": "def f():\n", "test": "print(1)"}) + "\n")
    (tasks / "toy_code.yaml").write_text(CODE_TASK.format(data=json.dumps(str(tmp_path / "code.jsonl"))))
    probe, hang = tmp_path / "env-seen-by-code.json", tmp_path / "hang"
    (tasks / "utils.py").write_text(CODE_UTILS.format(probe=str(probe), hang=str(hang)))
    return tasks, probe, hang


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) is dead too.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


SECRETS = {
    "HF_TOKEN": "hf_secret_1",
    "HUGGING_FACE_HUB_TOKEN": "hf_secret_2",
    "GITHUB_TOKEN": "ghp_secret_3",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_4",
}


@pytest.fixture
def code_eval_argv(pico_world, code_task, monkeypatch):
    """``evaluate`` on the code task, with secrets in the environment."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return ["evaluate", str(pico_world.base), "--tasks", "toy_code", "--include-tasks", str(code_task[0]), "--limit", "1"]


def test_code_eval_needs_the_flag_and_runs_without_tokens(pico_world, code_task, code_eval_argv, capsys):
    tasks, probe, hang = code_task
    secrets, argv = SECRETS, code_eval_argv

    # Without --allow-code-eval: refused before anything runs; HumanEval too.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "executes model-written code" in err or "execute" in err
    assert "--allow-code-eval" in err and not probe.exists()
    assert main(["evaluate", str(pico_world.base), "--tasks", "gsm8k,humaneval"]) == 2
    assert "humaneval" in capsys.readouterr().err

    # With it: runs in a child that sees none of the secrets.
    assert main([*argv, "--allow-code-eval"]) == 0
    seen = json.loads(probe.read_text())
    assert seen == {**{name: "<none>" for name in secrets}, "HF_ALLOW_CODE_EVAL": "1"}
    assert not any(value in capsys.readouterr().out for value in secrets.values())


@pytest.mark.slow  # waits out a 15-second time limit
def test_code_eval_has_a_time_limit_that_kills_everything_it_started(code_task, code_eval_argv, capsys):
    # Runaway code: the time limit kills the child and the process it started. (15 s leaves the child time to load
    # lm-eval and the task before the code runs; the model stays in this process.)
    tasks, probe, hang = code_task
    argv = code_eval_argv
    hang.write_text("")
    started = time.monotonic()
    assert main([*argv, "--allow-code-eval", "--code-timeout", "15"]) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err
    assert "ran past its time limit (15 s)" in err and "--code-timeout" in err
    sleeper = int(hang.read_text())
    deadline = time.monotonic() + 10
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(sleeper), "the process started by model-written code outlived the time limit"


def test_remote_code_of_a_checkpoint_is_never_imported(pico_world, tmp_path, capsys):
    """A checkpoint whose config points at its own modeling and tokenizer code (auto_map): we load the built-in
    classes of its model_type and never import that code."""
    model = tmp_path / "custom-code"
    shutil.copytree(pico_world.model("count"), model)
    marker = tmp_path / "remote-code-ran"
    payload = f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
    (model / "modeling_evil.py").write_text(payload + "class EvilForCausalLM: pass\n")
    (model / "configuration_evil.py").write_text(payload + "class EvilConfig: pass\n")
    (model / "tokenization_evil.py").write_text(payload + "class EvilTokenizer: pass\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))

    assert main(["evaluate", str(model), "--tasks", "toy_count", "--include-tasks", str(pico_world.tasks), "--limit", "8"]) == 0
    assert "toy_count" in capsys.readouterr().out
    assert (
        main(
            [
                "check",
                str(model),
                "--base",
                str(pico_world.base),
                "--merge-with",
                str(pico_world.model("rev")),
                "--freerider-tasks",
                "toy_rev",
                "--tasks",
                "toy_count",
                "--include-tasks",
                str(pico_world.tasks),
                "--methods",
                "task_arithmetic",
                "--limit",
                "8",
            ]
        )
        == 1
    )  # unprotected: merges keep what it has
    assert not marker.exists(), "a checkpoint's own code was imported"
    # Control: the same folder does run its code when trust_remote_code is on (so the test above can fail).
    from transformers import AutoModelForCausalLM

    with pytest.raises(Exception):  # noqa: B017 - the fake classes fail to load in any of several ways; the import ran
        AutoModelForCausalLM.from_pretrained(str(model), trust_remote_code=True)
    assert marker.exists()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_release_leaks_no_token_and_no_key(toy_release, hub, capsys, caplog, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)  # the token reaches us twice: environment and --token
    caplog.set_level(logging.DEBUG)
    assert main(["--debug", *toy_release.argv()]) == 0
    out, err = capsys.readouterr()
    key = toy_release.tmp / "protected.key.safetensors"

    # The key: owner-only, beside the release, named (by path) in the output, never inside the release or the push.
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert str(key) in out and not (toy_release.out / key.name).exists()
    (commit,) = hub.commits
    assert sorted(commit["files"]) == sorted(
        [
            "README.md",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "protect_config.yml",
            "selftest.json",
            "selftest.png",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    assert sorted(commit["files"]) == sorted(p.name for p in toy_release.out.iterdir() if p.name != "protect.log")
    assert commit["files"] == {name: (toy_release.out / name).read_bytes() for name in commit["files"]}

    # Where a secret could end up: every file we wrote (release, work folder, logs), the push, stdout/stderr, logs.
    written = {**_files(toy_release.out), **_files(toy_release.tmp / "work")}
    pushed = {f"pushed:{name}": content for name, content in commit["files"].items()}
    texts = {
        "stdout": out.encode(),
        "stderr": err.encode(),
        "logs": caplog.text.encode(),
        "commit message": f"{commit['summary']}\n{commit['description']}".encode(),
    }
    everything = {**written, **pushed, **texts}
    assert len(written) > 10 and len(caplog.records) > 10
    leaks = [where for where, content in everything.items() if GOOD_TOKEN.encode() in content]
    assert leaks == [], f"the token appears in {leaks}"

    # The key's values (the secret transform) appear nowhere public: not in the release, the push or the output.
    # (The work folder keeps its own 0600 copy of the key, to resume a killed run: that one is expected.)
    public = {**_files(toy_release.out), **pushed, **texts}
    key_tensors = {name: t for name, t in load_file(key).items() if t.numel() >= 8}
    assert key_tensors
    for name, tensor in key_tensors.items():
        raw = tensor.contiguous().numpy().tobytes()[:64]
        found = [where for where, content in public.items() if raw in content]
        assert found == [], f"key tensor {name} appears in {found}"
    work_keys = list((toy_release.tmp / "work").rglob("*.key.safetensors"))
    assert work_keys and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in work_keys)
