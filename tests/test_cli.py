"""The command line: help, version, env, and how errors reach the user."""

import json
import subprocess
import sys

from hf_mergeguard import __version__
from hf_mergeguard.cli.main import main


def test_help_lists_the_commands_with_an_example_each(capsys):
    """`hf-mergeguard --help` names every command and shows one example of each, made of options the command has
    (the arguments are parsed by the command itself, up to the point where it would read the files)."""
    import shlex

    import typer

    from hf_mergeguard.cli.app import EXAMPLES, app

    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the help wraps long lines
    group = typer.main.get_command(app)
    commands = {"env", "demo", "merge", "evaluate", "check", "protect", "attack", "unprotect", "push", "card"}
    assert set(EXAMPLES) == set(group.commands) == commands
    for command, example in EXAMPLES.items():
        assert f"{command}: {example}" in out, command
        words = shlex.split(example)[2:]
        context = group.commands[command].make_context(command, words, resilient_parsing=False)
        assert not context.args, (command, context.args)  # every word was an argument or option of the command


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hf-mergeguard {__version__}"


def test_console_script_runs():
    completed = subprocess.run([sys.executable, "-m", "hf_mergeguard.cli.main", "--version"], capture_output=True, text=True)
    assert completed.returncode == 0 and __version__ in completed.stdout
    # `accelerate launch -m hf_mergeguard.cli.main protect ...` (the README's multi-GPU line) needs the commands.
    completed = subprocess.run([sys.executable, "-m", "hf_mergeguard.cli.main", "protect", "--help"], capture_output=True, text=True)
    assert completed.returncode == 0 and "--method" in completed.stdout


def test_env_reports_the_stack(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for package in ("torch", "transformers", "accelerate", "lm_eval", "mergekit", "huggingface_hub"):
        assert info["packages"][package], package
    assert info["packages"]["mergekit"] == "0.1.5"
    assert isinstance(info["gpus"], list)


def test_errors_print_a_hint_and_no_traceback(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "missing-model"), "--tasks", "toy_add"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("Error: ") and "Hint: " in err
    assert "Traceback" not in err
    code = main(["--debug", "evaluate", str(tmp_path / "missing-model"), "--tasks", "toy_add"])
    assert code == 2 and "Traceback" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert main(["check"]) == 2
    assert "Missing argument" in capsys.readouterr().err
