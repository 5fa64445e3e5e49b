"""Progress that suits where the output goes.

On a terminal, tqdm's bars. Off one (CI, ``| tee``, ``> log``) or with ``HF_HUB_DISABLE_PROGRESS_BARS`` set
(huggingface_hub's switch, honoured for every bar of the tool), no carriage-return frames: a line with the stage's
percentage every :data:`LOG_INTERVAL` seconds while it runs, and one line when it ends. Every long loop of the tool
takes its bar from :func:`progress_bar`. A run's own log file, whatever the console shows: :class:`RunLogFile`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator

# Seconds between two lines of a stage off a terminal.
LOG_INTERVAL = 10.0
_TRUE = {"1", "true", "yes", "on"}


def _switched_on(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() in _TRUE


def bars_wanted(stream=None) -> bool:
    """Whether animated bars suit ``stream`` (default stderr, where bars go): a terminal, and not switched off."""
    if _switched_on("HF_HUB_DISABLE_PROGRESS_BARS"):
        return False
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def quiet_library_bars() -> None:
    """Off a terminal, turn off the bars of the libraries the tool calls (huggingface_hub's downloads, transformers'
    loading, datasets) the way each documents: their environment variables, read at import, and their switches for
    the ones already imported. A variable the user set is left as it is."""
    if bars_wanted():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if not _switched_on("HF_HUB_DISABLE_PROGRESS_BARS"):
        return
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules and _switched_on("HF_DATASETS_DISABLE_PROGRESS_BARS"):
        import datasets

        datasets.disable_progress_bars()


def _amount(value: float, unit: str) -> str:
    if unit != "B":
        return f"{value:g}"
    prefix = ""
    for larger in ("k", "M", "G", "T"):
        if value < 1000:
            break
        value, prefix = value / 1000, larger
    return f"{value:.1f} {prefix}B" if prefix else f"{value:.0f} B"


class LineProgress:
    """The subset of tqdm's interface the tool uses, writing whole lines: ``desc: 40% (4/10) loss=0.25`` at most every
    ``interval`` seconds, and ``desc: done (10/10) in 12 s`` at the end. Nothing is written for a disabled bar."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: float | None = None,
        desc: str = "",
        disable: bool = False,
        unit: str = "it",
        file=None,
        interval: float = LOG_INTERVAL,
        **_tqdm_options,  # leave, unit_scale, ...: a bar's looks, which lines do not have
    ):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.disable, self.unit = total, desc, disable, unit
        self.file, self.interval = file, interval
        self.n = 0
        self.postfix = ""
        self.started = self.last_line = time.monotonic()
        self.closed = False

    def _write(self, text: str) -> None:
        stream = self.file if self.file is not None else sys.stderr
        stream.write(f"{self.desc}: {text}" if self.desc else text)
        stream.write("\n")
        stream.flush()

    def _count(self) -> str:
        if self.total:
            return f"{_amount(self.n, self.unit)}/{_amount(self.total, self.unit)}"
        return _amount(self.n, self.unit)

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.disable or self.closed or now - self.last_line < self.interval:
            return
        self.last_line = now
        share = f"{100 * self.n / self.total:.0f}% " if self.total else ""
        self._write(f"{share}({self._count()}){self.postfix}")

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = "".join(f" {key}={value}" for key, value in values.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = f" {text}" if text else ""

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable:
            self._write(f"done ({self._count()}) in {time.monotonic() - self.started:.0f} s{self.postfix}")

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()  # only when the loop ran to its end: a stage an error stopped is not "done"

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, error_type, *_) -> None:
        if error_type is None:
            self.close()
        self.closed = True


def progress_bar(iterable: Iterable | None = None, **options):
    """A tqdm bar on a terminal, else a :class:`LineProgress` (same arguments as ``tqdm.auto.tqdm``)."""
    if bars_wanted(options.get("file")):
        from tqdm.auto import tqdm

        return tqdm(iterable, **options)
    return LineProgress(iterable, **options)


class RunLogFile:
    """Copies this package's log records (INFO and up) into a file while a run lasts: ``protect``'s protect.log."""

    def __init__(self, path: str | os.PathLike):
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.logger = logging.getLogger("hf_mergeguard")

    def __enter__(self):
        self.previous = self.logger.level
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous)
        self.handler.close()
        return False
