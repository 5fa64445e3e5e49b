"""The typer app and its global options; every command module registers its command here."""

from __future__ import annotations

import logging
import sys

import typer

from .. import __version__

# One example per command, listed under `hf-mergeguard --help` (tests/test_cli.py checks that every command has one).
EXAMPLES = {
    "demo": "hf-mergeguard demo --out mergeguard-demo",
    "check": "hf-mergeguard check ./my-finetune --base meta-llama/Llama-3.2-1B --tasks gsm8k --format sarif",
    "protect": "hf-mergeguard protect my-org/my-finetune --base meta-llama/Llama-3.2-1B --train-data rows.jsonl "
    "--tasks gsm8k --output-dir protected",
    "attack": "hf-mergeguard attack someone/protected --base meta-llama/Llama-3.2-1B --kind realign --tasks gsm8k",
    "unprotect": "hf-mergeguard unprotect protected --key protected.key.safetensors --output-dir restored",
    "card": "hf-mergeguard card protected",
    "push": "hf-mergeguard push protected my-org/my-finetune-protected",
    "merge": "hf-mergeguard merge ties.yml merged",
    "evaluate": "hf-mergeguard evaluate ./my-finetune --tasks gsm8k --limit 100",
    "env": "hf-mergeguard env",
}

app = typer.Typer(
    name="hf-mergeguard",
    help="Protect fine-tuned models against unauthorized merging, and prove it before release.",
    epilog="Examples, one per command (hf-mergeguard COMMAND --help for every option):\n\n"
    + "\n\n".join(f"{command}:  {example}" for command, example in EXAMPLES.items()),
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
