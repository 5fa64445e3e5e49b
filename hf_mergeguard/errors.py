"""Every error hf-mergeguard raises on purpose, in one place.

Each error carries a message that names the problem and a ``hint`` that says what to do next. The CLI
prints ``Error: <message>`` and ``Hint: <hint>`` and exits with ``exit_code`` (2 for errors; the gates of
the self-test use 1). Subclasses also inherit the matching builtin (``ValueError``, ``FileExistsError``,
...) so callers of the Python API can catch what they already know.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class MergeGuardError(Exception):
    """Base class of all hf-mergeguard errors."""

    exit_code = 2
    default_hint: str | None = None  # what to do when the raise site has nothing more specific to say

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


# --- checkpoints and architectures -------------------------------------------------------------------


class CheckpointError(MergeGuardError, ValueError):
    """A checkpoint folder cannot be read as a model."""


class PickleCheckpointError(CheckpointError):
    """Only pickle weights (*.bin, *.pt): loading them could execute code, so we refuse."""


class CorruptCheckpointError(CheckpointError):
    """A safetensors file or its index is truncated, malformed or inconsistent."""


class NonFiniteWeightsError(CheckpointError):
    """A weight holds NaN or Inf, in an input or in something we were about to write."""


class UnsupportedArchitectureError(MergeGuardError, ValueError):
    """config.json names a model_type we have no geometry for."""


class IncompatibleModelsError(MergeGuardError, ValueError):
    """Two models that must share a base (architecture, tensor names, shapes) do not."""


class OutputExistsError(MergeGuardError, FileExistsError):
    """The output folder exists and --overwrite was not given."""


class DiskFullError(MergeGuardError, OSError):
    """Writing an output ran out of space; nothing partial was left behind."""


# --- the Hub -------------------------------------------------------------------------------------------


class HubError(MergeGuardError):
    """Talking to the Hugging Face Hub failed."""


class RepoNotFoundError(HubError, LookupError):
    """The repo id does not exist (or is private and the token cannot see it)."""


class GatedRepoError(HubError, PermissionError):
    """The repo is gated and the token has no access yet."""


class RevisionNotFoundError(HubError, LookupError):
    """The repo exists but the revision does not."""


class OfflineError(HubError, ConnectionError):
    """Offline mode (or no network) and the files are not in the local cache."""


class PushPermissionError(HubError, PermissionError):
    """The token cannot write to the --push-to repo."""


# --- configuration, data, names ------------------------------------------------------------------------


class ConfigError(MergeGuardError, ValueError):
    """A YAML config or an option value is invalid."""

    default_hint = "Fix the value on the command line or in --config (`hf-mergeguard COMMAND --help` lists the options)."


class TrainDataError(MergeGuardError, ValueError):
    """--train-data is missing, empty or has no usable columns."""

    default_hint = "Pass a JSONL file whose rows have prompt+completion, question+answer or text, or a Hub dataset."


_LISTED = 40  # names listed in full when no more are available


class UnknownNameError(MergeGuardError, KeyError):
    """A name (merge method, defense, attack, task) is not registered; suggests the closest ones."""

    def __init__(self, kind: str, name: str, available: Iterable[str], hint: str | None = None):
        available = sorted(available)
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        message = f"Unknown {kind} {name!r}."
        if close:
            message += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        if len(available) <= _LISTED:
            message += " Available: " + ", ".join(available) + "."
        else:  # lm-eval knows thousands of tasks: the suggestions are what helps
            message += f" ({len(available)} are available.)"
        super().__init__(message, hint or f"Check the spelling; use one of the available {kind}s.")
        self.name = name
        self.suggestions = close

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return MergeGuardError.__str__(self)


class UnknownTaskError(UnknownNameError):
    """lm-eval does not know the task (and no --include-tasks folder defines it)."""


class CodeEvalNotAllowedError(MergeGuardError, PermissionError):
    """A task executes model-written code and --allow-code-eval was not given."""


class KeyFileError(MergeGuardError, ValueError):
    """A defense key file is missing, unreadable, too open, or belongs to another checkpoint."""


class TrainingError(MergeGuardError, RuntimeError):
    """Training diverged (NaN loss) or could not start."""

    default_hint = "Lower the learning rate (--learning-rate) or check --train-data; rerun with --debug for details."


# --- outcomes ------------------------------------------------------------------------------------------


class InsufficientMemoryError(MergeGuardError, MemoryError):
    """A stage's modelled peak memory is above what the device has free (checked before any work)."""

    default_hint = "Pass the options the message names, or --no-memory-check if you know the run fits."


class GateFailedError(MergeGuardError):
    """The self-test's gates failed: the model is not safe to release (exit code 1, nothing pushed)."""

    exit_code = 1
