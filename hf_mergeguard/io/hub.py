"""The Hugging Face Hub edge, pulling side: model snapshots, and Hub errors translated into ours.

Only :class:`~hf_mergeguard.io.checkpoint.Checkpoint` calls :func:`download_model`; tokens are passed through to
``huggingface_hub`` and never printed or stored. Pushing is in :mod:`hf_mergeguard.release.push`.
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import __version__
from ..errors import (
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
# How the Hub, datasets and lm-eval say that files are neither cached nor reachable (they raise many types).
_OFFLINE = re.compile(r"offline|connect|resolve|couldn't|not find|doesn't exist|LocalEntryNotFound", re.IGNORECASE)


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and ".." not in text


def looks_offline(message: str) -> bool:
    """Does an error message (``"Type: text"``) say that files were neither in the cache nor reachable?"""
    return bool(_OFFLINE.search(message))


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
