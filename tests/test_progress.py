"""Progress off a terminal: lines, not carriage-return frames (the real CLI's log is checked in
tests/test_pipeline.py's torchrun run); on a terminal, tqdm's bars; HF_HUB_DISABLE_PROGRESS_BARS honoured."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from hf_mergeguard.progress import LineProgress, bars_wanted, progress_bar


def test_off_a_terminal_a_stage_writes_percentage_lines_and_one_done_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    log = io.StringIO()  # not a terminal
    bar = progress_bar(range(4), desc="trap", file=log, leave=False)
    assert isinstance(bar, LineProgress)
    bar.interval = 0  # a line at every step (10 s apart in use)
    for _ in bar:
        bar.set_postfix(loss="0.2500")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[:3] == ["trap: 25% (1/4) loss=0.2500", "trap: 50% (2/4) loss=0.2500", "trap: 75% (3/4) loss=0.2500"]
    assert lines[-1].startswith("trap: done (4/4) in ") and lines[-1].endswith(" s loss=0.2500")

    # Bytes read as bytes; a disabled bar writes nothing; a stage an error stopped is not "done".
    log = io.StringIO()
    with progress_bar(total=3_000_000_000, unit="B", unit_scale=True, desc="Checking base", file=log) as bar:
        bar.update(1_500_000_000)
    assert log.getvalue() == f"Checking base: done (1.5 GB/3.0 GB) in {0} s\n"
    log = io.StringIO()
    for _ in progress_bar(range(3), desc="rank 1", disable=True, file=log):
        pass
    assert log.getvalue() == ""
    log = io.StringIO()
    with pytest.raises(ValueError):
        with progress_bar(total=2, desc="merge", file=log) as bar:
            raise ValueError
    assert log.getvalue() == ""


def test_a_terminal_gets_bars_unless_huggingface_hubs_switch_is_set():
    """stderr a pseudo-terminal: tqdm's bar (carriage returns); with HF_HUB_DISABLE_PROGRESS_BARS=1, lines."""
    script = "from hf_mergeguard.progress import progress_bar\nfor _ in progress_bar(range(3), desc='stage', mininterval=0): pass\n"

    def run(**env):
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a window: tqdm sizes its bar by it
        environment = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
        subprocess.run([sys.executable, "-c", script], stderr=terminal, env={**environment, **env}, timeout=60, check=True)
        os.close(terminal)
        output = b""
        try:
            while chunk := os.read(controller, 65536):
                output += chunk
        except OSError:  # the terminal's other end is closed: all read
            pass
        os.close(controller)
        return output.decode()

    assert "\r" in run() and "3/3" in run()
    lines = run(HF_HUB_DISABLE_PROGRESS_BARS="1")
    assert "stage: done (3/3)" in lines and "\r" not in lines.replace("\r\n", "\n")  # the terminal's own line ends


def test_bars_wanted_reads_the_stream_and_the_switch(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert bars_wanted(Terminal()) and not bars_wanted(io.StringIO())
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    assert not bars_wanted(Terminal())
