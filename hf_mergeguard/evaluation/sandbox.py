"""Running model-written code: a child process with no tokens in its environment, in a session of its own that a
time limit kills whole (code tasks such as HumanEval and MBPP execute what the model wrote)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from ..errors import MergeGuardError

# Environment variables a code-executing child must never see (tokens, keys, passwords).
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|PRIVATE_KEY|ACCESS_KEY", re.IGNORECASE)


def scrubbed_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without tokens or keys, for processes that run untrusted code."""
    env = {k: v for k, v in os.environ.items() if not _SECRET_NAME.search(k)}
    # No implicit token from the login file either.
    env["HF_TOKEN_PATH"] = os.devnull
    env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    env.update(extra or {})
    return env


def copy_code_eval_metric(folder: str | os.PathLike) -> None:
    """Put ``evaluate``'s ``code_eval`` metric (vendored: ``vendor/NOTICE.md``) in ``folder``, the child's working
    directory: ``evaluate.load("code_eval")``, as lm-eval's HumanEval and MBPP call it, then loads this copy instead of
    fetching the metric from the Hub."""
    shutil.copytree(Path(__file__).parent / "vendor" / "code_eval", Path(folder) / "code_eval", dirs_exist_ok=True)


def run_with_time_limit(command: list[str], *, env: dict, cwd: str, timeout: float, what: str) -> subprocess.CompletedProcess:
    """Run ``command`` in a session of its own; past ``timeout`` the whole session is killed (model-written code
    may have started processes of its own, which ``subprocess.run``'s timeout would leave running)."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise MergeGuardError(
            f"{what} ran past its time limit ({timeout:.0f} s); the child process and everything it started were killed.",
            "Raise --code-timeout, or lower --limit.",
        ) from None
    except BaseException:  # interrupted: take the untrusted code down with us
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
