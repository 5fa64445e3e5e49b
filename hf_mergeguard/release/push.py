"""Pushing a release folder to the Hub: the write-access preflight, and one commit (a pull request by default).

The ``push`` command's engine (:func:`push_output`) refuses a folder whose self-test failed unless forced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import __version__
from ..card.model_card import write_card
from ..errors import ConfigError, GateFailedError, PushPermissionError
from ..io.atomic import write_text_atomically
from ..io.hub import hub_error
from ..report.schema import SELFTEST_FILE, Release, SelfTestReport, load_report

# Files of a release folder that go to the Hub (the log stays local: it holds local paths).
PUSHED_SUFFIXES = (".safetensors", ".json", ".md", ".png", ".yml", ".model", ".tiktoken", ".txt", ".jinja")
NOT_PUSHED = ("protect.log",)


def preflight_push(repo_id: str, *, token: str | bool | None = None) -> str:
    """Check, before any work, that this token may write to ``repo_id`` (or create it). Returns the user name.

    Raises:
        PushPermissionError: not logged in, or no write access to the repo / its namespace.
    """
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    api = HfApi(library_name="hf-mergeguard", library_version=__version__)
    try:
        user = api.whoami(token=token)
    except hf_errors.LocalTokenNotFoundError:
        raise PushPermissionError(
            f"--push-to {repo_id} needs a Hub token and none was found.",
            "Log in (hf auth login), set HF_TOKEN, or use GitHub OIDC in CI (HF_OIDC_RESOURCE).",
        ) from None
    # HF_OIDC_RESOURCE is set and no token came of it: huggingface_hub does not fall back to a stored one. (OIDCError
    # exists from huggingface_hub 1.19 on; before it, nothing to catch.)
    except getattr(hf_errors, "OIDCError", ()) as exc:
        raise PushPermissionError(
            f"Trusted publishing (HF_OIDC_RESOURCE) could not get a Hub token for --push-to {repo_id}: {str(exc).split(' See ')[0]}",
            "In GitHub Actions give the job `permissions: id-token: write` and add the workflow as the repo's trusted publisher "
            "on the Hub; elsewhere unset HF_OIDC_RESOURCE and log in or set HF_TOKEN.",
        ) from None
    except hf_errors.HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code == 401:
            raise PushPermissionError(
                f"The Hub rejected this token (--push-to {repo_id}).",
                "Log in again (hf auth login) or set a valid HF_TOKEN with write access.",
            ) from None
        raise hub_error(exc, repo_id) or exc from exc
    try:
        api.auth_check(repo_id, write=True, token=token)
    except hf_errors.GatedRepoError:
        raise
    except hf_errors.RepositoryNotFoundError:
        # A repo that does not exist yet: the namespace must be the user's or one of their orgs.
        namespace = repo_id.split("/")[0] if "/" in repo_id else user["name"]
        allowed = {user["name"], *(org.get("name") for org in user.get("orgs", []))}
        if namespace not in allowed:
            raise PushPermissionError(
                f"{repo_id} does not exist and {user['name']} cannot create repos under {namespace!r}.",
                "Push to your own namespace or an organization you belong to, or create the repo first.",
            ) from None
    except hf_errors.HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code in (401, 403):
            raise PushPermissionError(
                f"This token cannot write to {repo_id}.",
                "Use a token with write access (a fine-grained token needs 'write' on this repo).",
            ) from None
        raise hub_error(exc, repo_id) or exc from exc
    return user["name"]


def push_release(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | bool | None = None,
    create_pr: bool = True,
    private: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
) -> str:
    """Push a release folder (weights, card, plot, selftest.json, config) to ``repo_id`` in ONE commit.

    Returns the URL of the pull request (``create_pr``, the default) or of the commit.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    api = HfApi(library_name="hf-mergeguard", library_version=__version__)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(PUSHED_SUFFIXES) and p.name not in NOT_PUSHED)
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Protected release (hf-mergeguard {__version__})",
            commit_description=commit_description,
            create_pr=create_pr,
            token=token,
        )
    except Exception as exc:  # noqa: BLE001
        translated = hub_error(exc, repo_id)
        if translated is None:
            raise
        raise translated from exc
    return info.pr_url if create_pr and info.pr_url else info.commit_url


def commit_message(method: str | None, forced: bool) -> str:
    return f"Protected with {method or 'hf-mergeguard'} (hf-mergeguard {__version__})" + (
        " [gates FAILED, pushed with --force]" if forced else ""
    )


def gate_failure(report: SelfTestReport, message: str, hint: str) -> GateFailedError:
    """The error of a failed verdict (exit code 1): a protected model that lost its own skill first, then which gates
    failed, then ``message``."""
    from ..report.table import skill_loss_warning

    warning = skill_loss_warning(report)
    first = f"{warning}\n" if warning else ""
    return GateFailedError(f"{first}The self-test gate(s) {', '.join(report.failed_gates())} failed{message}", hint)


def push_output(
    folder: str | Path, repo_id: str, *, token: str | None = None, create_pr: bool = True, private: bool = False, force: bool = False
) -> str:
    """Push a finished ``protect`` output folder (``hf-mergeguard push``); refuses when a gate failed unless ``force``.

    Used by the GitHub workflow, whose push job holds the Hub credentials and nothing else.

    Raises:
        GateFailedError: a gate failed and ``force`` is off (nothing is pushed).
    """
    folder = Path(folder)
    report_file = folder / SELFTEST_FILE
    if not report_file.is_file() or not any(folder.glob("*.safetensors")):
        raise ConfigError(
            f"{folder} is not a finished protect output (selftest.json and weights).", "Run protect first; push its --output-dir."
        )
    report = load_report(report_file)
    if not report.passed and not force:
        raise gate_failure(
            report,
            f" for {folder}; nothing was pushed to {repo_id}.",
            "Strengthen the protection and rerun protect, or pass --force (the card will say so).",
        )
    preflight_push(repo_id, token=token)
    forced = force and not report.passed
    if forced or report.release is None or report.release.name != repo_id:
        report = dataclasses.replace(report, release=Release(name=repo_id, forced=forced))
        write_text_atomically(report_file, report.to_json())
        write_card(folder)
    return push_release(
        folder, repo_id, token=token, create_pr=create_pr, private=private, commit_message=commit_message(report.method, forced)
    )
