"""Pushing a release to the Hub, against a local fake of the Hub's HTTP API (the network edge only)."""

import shutil
from pathlib import Path

import pytest

from hf_mergeguard.card import write_card
from hf_mergeguard.errors import PushPermissionError
from hf_mergeguard.release.push import preflight_push, push_release

from fake_hub import GOOD_TOKEN

DATA = Path(__file__).parent / "data"


def _release(tmp_path) -> Path:
    folder = tmp_path / "release"
    folder.mkdir()
    shutil.copy(DATA / "selftest_count.json", folder / "selftest.json")
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    (folder / "protect_config.yml").write_text("model: toy/count\n")
    (folder / "protect.log").write_text("local paths stay local\n")
    write_card(folder)
    return folder


def test_push_is_one_commit_as_a_pull_request(hub, tmp_path):
    folder = _release(tmp_path)
    assert preflight_push("alice/count-protected", token=GOOD_TOKEN) == "alice"
    url = push_release(folder, "alice/count-protected", token=GOOD_TOKEN, private=True, commit_message="Protected")
    assert url == f"{hub.endpoint}/alice/count-protected/discussions/1"
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["create_pr"] is True and commit["summary"] == "Protected" and commit["revision"] == "main"
    assert sorted(commit["files"]) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "protect_config.yml",
        "selftest.json",
        "selftest.png",
    ]
    assert commit["files"]["model.safetensors"] == b"weights"
    assert commit["files"]["README.md"].startswith(b"---\n")
    assert hub.repos["alice/count-protected"]["private"] is True
    assert not any(GOOD_TOKEN.encode() in content for content in commit["files"].values())


def test_push_directly_to_main(hub, tmp_path):
    url = push_release(_release(tmp_path), "acme/count", token=GOOD_TOKEN, create_pr=False)
    assert hub.commits[0]["create_pr"] is False and "/commit/" in url
    assert "selftest.json" in hub.repos["acme/count"]["files"]


def test_preflight_refuses_without_write_access(hub):
    with pytest.raises(PushPermissionError, match="cannot create repos under 'someone-else'"):
        preflight_push("someone-else/model", token=GOOD_TOKEN)
    with pytest.raises(PushPermissionError) as raised:
        preflight_push("alice/model", token="hf_wrong")
    assert "hf_wrong" not in str(raised.value)
    assert hub.commits == []


def test_push_command_refuses_a_failed_run_unless_forced(hub, tmp_path, capsys):
    from hf_mergeguard.cli.main import main

    folder = _release(tmp_path)  # its selftest.json failed both gates
    assert main(["push", str(folder), "acme/count", "--token", GOOD_TOKEN]) == 1
    assert hub.commits == [] and "nothing was pushed" in capsys.readouterr().err
    assert main(["push", str(folder), "acme/count", "--token", GOOD_TOKEN, "--force", "--no-create-pr"]) == 0
    (commit,) = hub.commits
    assert not commit["create_pr"] and "[gates FAILED, pushed with --force]" in commit["summary"]
    card = commit["files"]["README.md"].decode()
    assert "# acme/count" in card and "although a self-test gate failed" in card
    assert GOOD_TOKEN not in capsys.readouterr().out
    assert main(["push", str(tmp_path), "acme/count", "--token", GOOD_TOKEN]) == 2
