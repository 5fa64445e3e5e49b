"""The Hugging Face Hub edge: pulling model snapshots (and, later, pushing). Errors become ours.

Only :mod:`hf_mergeguard.checkpoint` calls :func:`download_model`; tokens are passed through to
``huggingface_hub`` and never printed or stored.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import __version__
from .errors import (
    CheckpointError,
    GatedRepoError,
    HubError,
    OfflineError,
    PickleCheckpointError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

# What a model snapshot needs: config, weights, tokenizer; never the original/ consolidated copies.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
IGNORE_PATTERNS = ["original/*"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and ".." not in text


def hub_error(exc: Exception, repo_id: str, revision: str | None = None) -> HubError | None:
    """Translate a ``huggingface_hub`` exception into one of ours (``None`` if it is not a Hub error)."""
    from huggingface_hub import errors as hf_errors

    # GatedRepoError subclasses RepositoryNotFoundError: test it first.
    if isinstance(exc, hf_errors.GatedRepoError):
        return GatedRepoError(
            f"{repo_id} is a gated repo and this token has no access to it.",
            f"Request access on https://huggingface.co/{repo_id}, then log in (hf auth login) or set HF_TOKEN.",
        )
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return RepoNotFoundError(
            f"Repo {repo_id} does not exist on the Hub (or it is private and this token cannot see it).",
            "Check the spelling of the repo id; for a private repo log in (hf auth login) or set HF_TOKEN.",
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"Revision {revision!r} of {repo_id} does not exist.",
            "Pass an existing branch, tag or commit with --revision.",
        )
    if isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
        return OfflineError(
            f"Cannot reach the Hub for {repo_id} and it is not in the local cache.",
            "Connect to the network (or unset HF_HUB_OFFLINE), or download it once while online "
            "(hf download " + repo_id + "), or pass a local folder instead.",
        )
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return HubError(f"The Hub answered an error for {repo_id}: {exc}", "Retry later; check status.huggingface.co.")
    return None


def download_model(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Path, str | None]:
    """Download (or reuse from the HF cache) the files a model needs; returns ``(folder, commit)``."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                allow_patterns=ALLOW_PATTERNS,
                ignore_patterns=IGNORE_PATTERNS,
                library_name="hf-mergeguard",
                library_version=__version__,
            )
        )
    except Exception as exc:  # noqa: BLE001 - translated below, re-raised if not a Hub error
        translated = hub_error(exc, repo_id, revision)
        if translated is None:
            raise
        raise translated from exc
    # Snapshot folders are named by commit hash: keep it for reproducibility.
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
    if not any(folder.glob("*.safetensors")):
        _refuse_pickle_only(repo_id, revision, token)
        raise CheckpointError(f"Repo {repo_id} has no *.safetensors weights.")
    return folder, commit


def _refuse_pickle_only(repo_id: str, revision: str | None, token: str | bool | None) -> None:
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(repo_id, revision=revision, token=token)
    except Exception:  # noqa: BLE001 - offline: we cannot tell, the generic error follows
        return
    pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    if pickles:
        raise PickleCheckpointError(
            f"Repo {repo_id} holds only pickle weights ({', '.join(pickles[:3])}); hf-mergeguard reads "
            "safetensors only, because loading a pickle can execute arbitrary code.",
            "Use the Hub's 'convert to safetensors' Space on the repo, or convert it yourself in an "
            "environment you trust (from_pretrained + save_pretrained writes safetensors).",
        )


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

    from .errors import PushPermissionError

    api = HfApi(library_name="hf-mergeguard", library_version=__version__)
    try:
        user = api.whoami(token=token)
    except hf_errors.LocalTokenNotFoundError:
        raise PushPermissionError(
            f"--push-to {repo_id} needs a Hub token and none was found.",
            "Log in (hf auth login), set HF_TOKEN, or use GitHub OIDC in CI (HF_OIDC_RESOURCE).",
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
