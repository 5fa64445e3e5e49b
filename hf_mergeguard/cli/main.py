"""Entry point of ``hf-mergeguard``: runs the app (``app.py``, its commands in their own modules) and maps errors to
exit codes.

Exit codes: 0 success; 1 a gate failed (the model is not safe to release); 2 an error (bad input, a
fault); 130 interrupted. Errors print one ``Error:`` line and a ``Hint:``; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import errno
import sys
import traceback

import typer

from ..errors import DiskFullError, MergeGuardError
from ..progress import quiet_library_bars
from . import commands  # noqa: F401 - each command module registers its command on the app
from .app import app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    quiet_library_bars()  # off a terminal, no library writes carriage-return frames into the log
    command = typer.main.get_command(app)
    try:
        return _run(command, argv, debug)
    finally:
        _end_distributed()


def _run(command, argv: list[str], debug: bool) -> int:
    from typer.exceptions import Abort, Exit, TyperException

    try:
        result = command.main(args=argv, prog_name="hf-mergeguard", standalone_mode=False)
    except Exit as exc:
        return exc.exit_code
    except (Abort, KeyboardInterrupt):
        typer.echo("Interrupted.", err=True)
        return 130
    except TyperException as exc:  # usage errors: missing or bad arguments
        exc.show()
        return 2
    except MergeGuardError as exc:
        return _report(exc, debug)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _report_unexpected(exc, debug)
        # A full disk outside the output folder (which raises DiskFullError itself): the work folder, the cache.
        return _report(
            DiskFullError(
                f"No space left on the device while writing {exc.filename or 'a file'}; nothing half-written is taken as finished.",
                "Free some space (or point --output-dir / --work-dir / HF_MERGEGUARD_CACHE elsewhere) and rerun the same "
                "command: finished steps are reused.",
            ),
            debug,
        )
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback unless --debug
        return _report_unexpected(exc, debug)
    return result if isinstance(result, int) else 0


def _report(error: MergeGuardError, debug: bool) -> int:
    """``Error:`` and ``Hint:`` on stderr (the traceback of what is being handled first with --debug)."""
    _end_progress_bars()
    if debug:
        traceback.print_exc()
    typer.echo(f"Error: {error.message}", err=True)
    if error.hint:
        typer.echo(f"Hint: {error.hint}", err=True)
    return error.exit_code


def _report_unexpected(exc: Exception, debug: bool) -> int:
    return _report(
        MergeGuardError(
            f"unexpected {type(exc).__name__}: {exc}", "Rerun with --debug for the traceback, and report it if it looks like a bug."
        ),
        debug,
    )


def _end_distributed() -> None:
    """Under `accelerate launch`: destroy the process group before exit (gloo's threads, left to interpreter
    teardown, can abort the process: "terminate called without an active exception")."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _end_progress_bars() -> None:
    """Close the bars an error interrupted, so that the error starts on a line of its own."""
    import tqdm

    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        bar.close()


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
