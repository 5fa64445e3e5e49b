"""What every benchmark script shares: its command line (--out, --results), the results file's header, pinned CPU
numerics, and the runs of ``protect`` on the toy world."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path

from hf_mergeguard.environment import reproducible_cpu_env

# The CPU code paths the tests use too (before torch is imported): toy-world figures are the same on every machine.
os.environ.update(reproducible_cpu_env())

RESULTS = Path(__file__).parent / "results"


def parse_args(doc: str, out: str | None, results: str, extra=None) -> argparse.Namespace:
    """``--out`` (working folder of the runs, when the script has one) and ``--results`` (the markdown file);
    ``extra(parser)`` adds a script's own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if out is not None:
        parser.add_argument("--out", type=Path, default=Path(__file__).parent / "_work" / out)
    parser.add_argument("--results", type=Path, default=RESULTS / results)
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def cpu_model() -> str:
    """The CPU's model name (what the numerics of an unpinned run depend on)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measured_on(script: str) -> str:
    """The machine-and-date line every results file starts with."""
    return (
        f"Measured {datetime.date.today().isoformat()} on {platform.node() or 'unknown'} ({cpu_model()}, {os.cpu_count()} cores, "
        f"CPU only; numerics pinned to AVX2) with `python benchmarks/{script}`."
    )


def peak_resident_mb() -> float:
    """This process's peak resident set (VmHWM; ``ru_maxrss`` would count the parent's memory at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def attack_names() -> list[str]:
    """Every registered adaptive attack (the --thorough ones too), in the order they run."""
    from hf_mergeguard.attacks.base import parse_attacks

    return parse_attacks(["all"])


def attack_cells(report: dict, score) -> list[str]:
    """One cell per adaptive attack: ``score(name, attack)``, the credited share, whether it defeats."""
    cells = []
    for name in attack_names():
        attack = report["robustness"]["attacks"].get(name)
        if attack is None:
            cells.append("not run")
            continue
        cells.append(f"{score(name, attack)}, credited {attack['credited']:.2f}{' **defeats**' if attack['defeats'] else ''}")
    return cells


def attack_text(attack: dict) -> str:
    """``97.0 (93% kept)``: an attack's best defender score and the share it keeps."""
    best = attack["best"]
    return f"{100 * best['defender_score']:.1f} ({100 * best['defender_kept']:.0f}% kept)"


def write_results(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)


def world_options(world, riders: tuple[str, ...], defender: str = "count") -> dict:
    """The configuration of a ``protect`` of the toy world's ``defender`` fine-tune against the ``riders``' fine-tunes."""
    return dict(
        model=str(world.model(defender)),
        base=str(world.base),
        tasks=[world.task_name(defender)],
        include_tasks=[str(world.tasks)],
        train_data=str(world.data(defender, "train")),
        merge_with=[str(world.model(r)) for r in riders],
        freerider_tasks=[f"toy_{r}" for r in riders],
    )


def run_settings(
    settings: dict[str, dict],
    out: Path,
    *,
    riders: tuple[str, ...] = ("rev", "sort"),
    selftest: dict | None = None,
    folders: list[str] | None = None,
    world=None,
    defender: str = "count",
) -> list[tuple[str, dict, float]]:
    """``protect`` the toy world's ``defender`` fine-tune (default: the first world's count) once per setting (config
    overrides), against ``riders``, each into ``out/<folder>`` (default ``setting-<index>``).

    Returns ``(name, report, seconds)`` per setting, the report as in ``selftest.json``; a failed gate still yields it.
    """
    import time

    from hf_mergeguard.config import build_protect_config
    from hf_mergeguard.pipeline import protect
    from hf_mergeguard.toyworld import build_toy_world

    world = world or build_toy_world()
    # The tables read every grid point: each is scored on every prompt (no race).
    common = dict(
        world_options(world, riders, defender), overwrite=True, selftest={"batch_size": 128, "race_rounds": 1, **(selftest or {})}
    )
    rows = []
    for index, (name, overrides) in enumerate(settings.items()):
        folder = folders[index] if folders else f"setting-{index}"
        config = build_protect_config(None, dict(common, output_dir=str(out / folder), **overrides))
        started = time.perf_counter()
        report = protect(config).report.to_dict()
        rows.append((name, report, time.perf_counter() - started))
        print(f"{name}: {rows[-1][2]:.0f} s", flush=True)
    return rows
