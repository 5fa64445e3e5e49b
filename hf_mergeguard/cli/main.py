"""Entry point of ``hf-mergeguard``: the typer app, global options, and the error -> exit code mapping.

Exit codes: 0 success; 1 a gate failed (the model is not safe to release); 2 an error (bad input, a
fault); 130 interrupted. Errors print one ``Error:`` line and a ``Hint:``; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import errno
import logging
import sys
import traceback

import typer

from .. import __version__
from ..errors import DiskFullError, MergeGuardError

app = typer.Typer(
    name="hf-mergeguard",
    help="Protect fine-tuned models against unauthorized merging, and prove it before release.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hf-mergeguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr."),
) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "lm_eval", "accelerate", "mergekit", "transformers"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def _register_commands() -> None:
    # Each module adds its commands to ``app``; imports stay light (heavy libraries load inside commands).
    from . import commands  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _register_commands()
    # Under `python -m hf_mergeguard.cli.main` (accelerate launch -m ...) this file runs as __main__, and the
    # commands register on the app of the imported module of the same name: use that one.
    from hf_mergeguard.cli import main as registered

    command = typer.main.get_command(registered.app)
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
        return _report(DiskFullError(
            f"No space left on the device while writing {exc.filename or 'a file'}; nothing half-written is taken as finished.",
            "Free some space (or point --output-dir / --work-dir / HF_MERGEGUARD_CACHE elsewhere) and rerun the same "
            "command: finished steps are reused."), debug)
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
    return _report(MergeGuardError(f"unexpected {type(exc).__name__}: {exc}",
                                   "Rerun with --debug for the traceback, and report it if it looks like a bug."), debug)


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
