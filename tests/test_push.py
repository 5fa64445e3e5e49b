"""Pushing a release to the Hub, against a local fake of the Hub's HTTP API (the network edge only)."""

import shutil
from pathlib import Path

import pytest

from hf_mergeguard.card import write_card
from hf_mergeguard.errors import PushPermissionError
from hf_mergeguard.release.push import preflight_push, push_release

from fake_hub import GITHUB_OIDC_PATH, GITHUB_REQUEST_TOKEN, GOOD_TOKEN, OIDC_TOKEN

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


def test_push_by_trusted_publishing_needs_no_stored_token(hub, tmp_path, monkeypatch, capsys):
    """The GitHub Action's path (action.yml, `permissions: id-token: write`, HF_OIDC_RESOURCE set to the --push-to repo,
    no HF_TOKEN): huggingface_hub asks the runner for an id token and exchanges it at the Hub's /oauth/token for a
    short-lived token scoped to that repo, and every request of the push carries it. GitHub's runtime and the Hub are
    the fake's; everything on this side is the real code."""
    import huggingface_hub.utils._auth as hub_auth

    from hf_mergeguard.cli.main import main

    monkeypatch.setattr(hub_auth, "_OIDC_TOKEN_CACHE", None)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", hub.endpoint + GITHUB_OIDC_PATH)
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", GITHUB_REQUEST_TOKEN)
    monkeypatch.setenv("HF_OIDC_RESOURCE", "acme/count")
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    hub.repos["acme/count"] = {"private": False, "files": {}}  # trusted publishing is set up on an existing repo
    folder = _release(tmp_path)
    assert main(["push", str(folder), "acme/count", "--force"]) == 0
    assert hub.oidc_resources == ["acme/count"]  # one exchange, scoped to the pushed repo
    (commit,) = hub.commits
    hub_calls = [r for r in hub.requests if r["path"] not in (GITHUB_OIDC_PATH, "/oauth/token")]
    assert hub_calls and all(r["oidc"] and r["authorized"] for r in hub_calls)
    printed = capsys.readouterr()
    assert OIDC_TOKEN not in printed.out + printed.err and not any(OIDC_TOKEN.encode() in c for c in commit["files"].values())
    # Trusted publishing on a runner without the id-token permission: a clear error, nothing pushed.
    monkeypatch.setattr(hub_auth, "_OIDC_TOKEN_CACHE", None)
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
    assert main(["push", str(folder), "acme/count", "--force"]) == 2
    err = capsys.readouterr().err
    assert "Error: Trusted publishing (HF_OIDC_RESOURCE) could not get a Hub token" in err and "Hint:" in err
    assert "id-token: write" in err and len(hub.commits) == 1
