"""What every benchmark script shares: its command line (--out, --results) and the results file's header."""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def parse_args(doc: str, out: str | None, results: str, extra=None) -> argparse.Namespace:
    """``--out`` (working folder of the runs, when the script has one) and ``--results`` (the markdown file);
    ``extra(parser)`` adds a script's own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if out is not None:
        parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--results", type=Path, default=RESULTS / results)
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def measured_on(script: str) -> str:
    """The machine-and-date line every results file starts with."""
    return (f"Measured {datetime.date.today().isoformat()} on {platform.node() or 'unknown'} "
            f"({platform.processor() or platform.machine()}, CPU only) with `python benchmarks/{script}`.")


def peak_resident_mb() -> float:
    """This process's peak resident set (VmHWM; ``ru_maxrss`` would count the parent's memory at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def attack_cells(report: dict, score) -> list[str]:
    """One cell per adaptive attack (the order of ``ATTACKS``): ``score(row)``, the credited share, whether it defeats."""
    from hf_mergeguard.attacks.base import parse_attacks

    cells = []
    for attack in ATTACKS:
        row = next(r for r in report["robustness"]["rows"] if r["attack"] == attack)
        cells.append(f"{score(row)}, credited {row['credited_share']:.2f}{' **defeats**' if row['defeats'] else ''}")
    return cells


def write_results(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)


def run_settings(settings: dict[str, dict], out: Path, *, riders: tuple[str, ...] = ("rev", "sort"), selftest: dict | None = None) -> list[tuple[str, dict, float]]:
    """``protect`` the toy world's count fine-tune once per setting (config overrides), against ``riders``.

    Returns ``(name, report, seconds)`` per setting; a failed gate still yields its report.
    """
    import time

    from hf_mergeguard.config import build_protect_config
    from hf_mergeguard.errors import GateFailedError
    from hf_mergeguard.pipeline import protect
    from hf_mergeguard.toyworld import build_toy_world

    world = build_toy_world()
    common = dict(
        model=str(world.model("count")), base=str(world.base), tasks=["toy_count"], include_tasks=[str(world.tasks)],
        train_data=str(world.data("count", "train")), merge_with=[str(world.model(r)) for r in riders],
        freerider_tasks=[f"toy_{r}" for r in riders], overwrite=True, selftest={"batch_size": 128, **(selftest or {})},
    )
    rows = []
    for index, (name, overrides) in enumerate(settings.items()):
        config = build_protect_config(None, dict(common, output_dir=str(out / f"setting-{index}"), **overrides))
        started = time.perf_counter()
        try:
            report = protect(config)
        except GateFailedError as failed:
            report = failed.report
        rows.append((name, report, time.perf_counter() - started))
        print(f"{name}: {rows[-1][2]:.0f} s", flush=True)
    return rows
