"""Faults while writing: a defense that produces NaN/Inf, a full disk, a process killed mid-write.

Nothing half-written is ever taken as finished: weights are written into ``.NAME.partial-PID-*`` folders and
renamed into place whole; a work-folder step counts as done only once its ``.done.json`` marker exists; a rerun
of the same command removes what a dead run left and resumes from the last finished step.
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys

import pytest
import torch

from hf_mergeguard.cli.main import main
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.protect.keyfile import key_protected_digest
from hf_mergeguard.protect.steps import finished

STEP = "0-params/params-protected"  # the work folder's protected checkpoint of --method params


def _weights_equal(a, b) -> bool:
    a, b = Checkpoint(a), Checkpoint(b)
    return a.tensor_names == b.tensor_names and all(torch.equal(a.get(n), b.get(n)) for n in a.tensor_names)


def test_defense_producing_non_finite_weights_writes_nothing(toy_release, refused, monkeypatch):
    from hf_mergeguard.symmetry import transforms as symmetry

    original = symmetry.transform_tensors

    def overflowing(*args, **kwargs):  # as if a transform's conditioning overflowed in one tensor
        for name, tensor in original(*args, **kwargs):
            yield name, tensor * float("inf") if name.endswith("layers.2.self_attn.v_proj.weight") else tensor

    monkeypatch.setattr(symmetry, "transform_tensors", overflowing)
    refused(
        toy_release.argv(),
        inputs=[toy_release.model, toy_release.base],
        out=toy_release.out,
        expect=[r"layers\.2\.self_attn\.v_proj\.weight", r"NaN|Inf", r"about to be written"],
        hint="defense",
    )
    assert finished(toy_release.tmp / "work" / STEP) is None
    assert not list((toy_release.tmp / "work" / "0-params").glob(".*partial*"))


@pytest.mark.parametrize("where", ["weights", "release-folder", "key-file"])
def test_disk_full_while_writing(toy_release, refused, hub, where):
    """ENOSPC in the middle of the protected weights (work folder), of the release folder, or of the owner's key:
    nothing partial stays, no key, no push; freeing space and rerunning the same command finishes the job."""
    from hf_mergeguard.io import writer
    from hf_mergeguard.release import folder

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as fault:
        if where == "weights":
            calls = {"n": 0}
            write = writer._ShardWriter.write

            def filling_up(self, tensor):
                calls["n"] += 1
                if calls["n"] % 20 == 0:  # the disk fills up after some tensors
                    no_space()
                return write(self, tensor)

            fault.setattr(writer._ShardWriter, "write", filling_up)
        elif where == "release-folder":
            fault.setattr(folder, "write_card", no_space)
        else:
            fault.setattr(folder, "write_owner_key", no_space)
        refused(
            toy_release.argv(),
            inputs=[toy_release.model, toy_release.base],
            out=toy_release.out,
            expect=[r"No space left on the device"],
            hint="[Ff]ree some space",
        )
    if where == "weights":
        assert finished(toy_release.tmp / "work" / STEP) is None
    # Space freed: the same command finishes the job.
    assert main(toy_release.argv()) == 0
    assert _weights_equal(toy_release.out, toy_release.tmp / "work" / STEP)
    assert len(hub.commits) == 1


KILLER = """
import os, signal, sys
from hf_mergeguard.io import writer
from hf_mergeguard.release import folder
from hf_mergeguard.cli.main import main

where = sys.argv[1]
if where == "weights":
    write, calls = writer._ShardWriter.write, [0]
    def write_then_die(self, tensor):
        calls[0] += 1
        if calls[0] == 20:  # half-way through the protected weights
            os.kill(os.getpid(), signal.SIGKILL)
        return write(self, tensor)
    writer._ShardWriter.write = write_then_die
else:
    def die(release):  # the key is written, the release folder is being assembled
        os.kill(os.getpid(), signal.SIGKILL)
    folder.write_card = die
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("where", ["weights", "release-folder"])
def test_killed_mid_write_then_rerun(toy_release, where):
    """SIGKILL (no cleanup runs) half-way through the weights, or after the key while the release folder is
    assembled: nothing is taken as finished, and rerunning the same command completes the toy_release."""
    argv = toy_release.argv(push_to=None)
    killed = subprocess.run([sys.executable, "-c", KILLER, where, *argv], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not toy_release.out.exists()
    partials = list(toy_release.tmp.glob(".protected.partial-*")) + list((toy_release.tmp / "work").rglob(".*.partial-*"))
    assert partials, "the killed run left its partial folder (a rerun must not take it as finished)"
    key = toy_release.tmp / "protected.key.safetensors"
    if where == "weights":
        assert finished(toy_release.tmp / "work" / STEP) is None and not key.exists()
    else:
        assert finished(toy_release.tmp / "work" / STEP) is not None and key.exists()  # the key of this very run

    # The same command again: resumes (or starts the step again), removes the dead run's partial folders.
    assert main(argv) == 0
    assert _weights_equal(toy_release.out, toy_release.tmp / "work" / STEP)
    assert key_protected_digest(key) == finished(toy_release.tmp / "work" / STEP)["protected_digest"]
    assert not [p for p in partials if p.exists()]
    report = json.loads((toy_release.out / "selftest.json").read_text())
    assert report["passed"]
