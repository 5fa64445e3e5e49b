"""The harness of the reliability catalog: run the real CLI on one broken input and check every promise.

A refused run must: exit non-zero; print ``Error: <problem>`` and ``Hint: <fix>`` with no traceback (``--debug``
shows it); leave every input byte-for-byte (and mode-for-mode) as it was; leave no output folder, no partial
folder, no key file; and push nothing (the fake Hub saw no repo creation and no commit).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hf_mergeguard.cli.main import main

from fake_hub import GOOD_TOKEN


def fingerprint(paths) -> dict[str, tuple]:
    """sha256, mode and mtime of every file under ``paths`` (a changed input shows up here)."""
    prints = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for file in files:
            stat = file.stat()
            prints[str(file)] = (hashlib.sha256(file.read_bytes()).hexdigest(), stat.st_mode, stat.st_mtime_ns)
    return prints


@dataclass
class Release:
    """A valid ``protect`` command on a toy world; each test breaks one thing of it."""

    world: object
    tmp: Path
    out: Path
    protect_argv: object
    extra: list[str] = field(default_factory=list)
    push_to: str | None = "acme/protected"

    @property
    def model(self) -> str:
        return str(self.world.model("count"))

    @property
    def base(self) -> str:
        return str(self.world.base)

    def argv(
        self,
        *,
        model=None,
        base=None,
        merge_with=None,
        train_data=None,
        tasks: str = "toy_count",
        method: str = "params",
        methods: str = "task_arithmetic",
        push_to: str | None = "default",
    ) -> list[str]:
        push_to = self.push_to if push_to == "default" else push_to
        argv = self.protect_argv(
            self.world,
            self.out,
            "--method",
            method,
            "--no-adaptive",
            "--limit",
            "16",
            "--seed",
            "0",
            model=model or "count",
            base=base,
            merge_with=merge_with,
            train_data=train_data or True,
            tasks=tasks,
            methods=methods,
            batch_size=64,
            work=self.tmp / "work",
        )
        if push_to:
            argv += ["--push-to", push_to, "--token", GOOD_TOKEN]
        return argv + self.extra

    def copy(self, what: str) -> Path:
        """A private copy of a toy-world model (``base``, ``count``, ``rev``) to break."""
        source = self.world.base if what == "base" else self.world.model(what)
        target = self.tmp / f"copy-{what}"
        if not target.exists():
            shutil.copytree(source, target)
        return target


@pytest.fixture
def release(pico_world, tmp_path, hub, protect_argv):
    """A release on the pico world: for refusals, which stop before any work (seconds, in the fast lane)."""
    return Release(world=pico_world, tmp=tmp_path, out=tmp_path / "protected", protect_argv=protect_argv)


@pytest.fixture
def toy_release(toy_world, tmp_path, hub, protect_argv):
    """A release on the toy world: for runs that must pass every gate (params does, there)."""
    return Release(world=toy_world, tmp=tmp_path, out=tmp_path / "protected", protect_argv=protect_argv)


@pytest.fixture
def refused(capsys, hub):
    """``refused(argv, inputs=[...], expect=[regex, ...], out=PATH)`` runs the CLI twice (plain, --debug) and checks."""

    def check(argv, *, inputs, expect, out, code=2, hint=None):
        before = fingerprint(inputs)
        out_path = Path(out)
        key_path = out_path.parent / f"{out_path.name}.key.safetensors"  # protect's default key file
        # An existing output (or key) must stay exactly as it was; a missing one must stay missing.
        out_before = fingerprint([out_path, key_path])
        capsys.readouterr()
        assert main(argv) == code
        stdout, err = capsys.readouterr()
        assert re.search(r"(^|[\n\r])Error: ", err), err  # on a line of its own, after any progress bar
        assert "Hint: " in err, err
        assert "Traceback" not in err and "Traceback" not in stdout
        for pattern in expect:
            assert re.search(pattern, err), f"{pattern!r} not in:\n{err}"
        if hint:
            assert re.search(hint, err.split("Hint: ", 1)[1]), err
        assert fingerprint(inputs) == before, "an input was modified"
        assert fingerprint([out_path, key_path]) == out_before, "output or key file written"
        leftovers = [p.name for p in out_path.parent.glob(f".{out_path.name}*")]
        assert leftovers == [], leftovers
        assert hub.commits == [] and not [r for r in hub.requests if r["path"] == "/api/repos/create"], "pushed"
        # The same with --debug: the traceback is there for a bug report.
        assert main(["--debug", *argv]) == code
        stdout, err = capsys.readouterr()
        assert "Traceback" in err, err
        assert fingerprint(inputs) == before
        return err

    return check
