"""PaRaMS, MergeLock, MergeBarrier and MergeGuard+MergeLock on the toy world, every merge method.

Run by hand (about 7 minutes on 2 CPU cores once the toy world and the unprotected scores are cached):

    python benchmarks/function_preserving.py [--out DIR] [--results benchmarks/results/function_preserving.md]

Same setting as ``mergeguard_settings.py``: defender the ``count`` fine-tune, free-riders ``rev`` and ``sort``, all
300 test prompts per task, the attacker's coefficient grid per method. Each defense draws a fresh random key.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

from mergeguard_settings import METHODS, table

from hf_mergeguard.config import build_protect_config
from hf_mergeguard.errors import GateFailedError
from hf_mergeguard.pipeline import protect
from hf_mergeguard.toyworld import build_toy_world

SETTINGS = {
    "PaRaMS": "params",
    "MergeLock": "mergelock",
    "MergeBarrier (orthogonal part)": "mergebarrier",
    "MergeGuard (default) + MergeLock": "mergeguard+mergelock",
}


def run(out: Path) -> list[tuple[str, dict]]:
    world = build_toy_world()
    common = dict(
        model=str(world.model("count")), base=str(world.base), tasks=["toy_count"], include_tasks=[str(world.tasks)],
        train_data=str(world.data("count", "train")), merge_with=[str(world.model("rev")), str(world.model("sort"))],
        freerider_tasks=["toy_rev", "toy_sort"], overwrite=True, selftest={"batch_size": 128},
    )
    rows = []
    for index, (name, method) in enumerate(SETTINGS.items()):
        config = build_protect_config(None, dict(common, method=method, output_dir=str(out / f"setting-{index}")))
        started = time.perf_counter()
        try:
            report = protect(config)
        except GateFailedError as failed:
            report = failed.report
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        rows.append((name, report))
    return rows


def free_ride(report: dict, variant: str, method: str) -> float:
    """The most of BOTH skills one merge keeps: max over grid points and free-riders of min(defender, free-rider)."""
    return max(min(e["defender_kept"], e["freerider_kept"]) for e in report["merges"] if e["variant"] == variant and e["method"] == method)


def free_ride_table(rows: list[tuple[str, dict]]) -> str:
    first = rows[0][1]
    lines = [
        "| setting | " + " | ".join(METHODS) + " |",
        "|---" * (1 + len(METHODS)) + "|",
        "| no protection | " + " | ".join(f"{free_ride(first, 'original', m):.2f}" for m in METHODS) + " |",
    ]
    for name, report in rows:
        lines.append(f"| {name} | " + " | ".join(f"{free_ride(report, 'protected', m):.2f}" for m in METHODS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("function-preserving"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "function_preserving.md")
    args = parser.parse_args()
    rows = run(args.out)
    text = (
        "# Function-preserving defenses on the toy world\n\n"
        f"Measured {datetime.date.today().isoformat()} on {platform.node() or 'unknown'} "
        f"({platform.processor() or platform.machine()}, CPU only) with `python benchmarks/function_preserving.py`.\n\n"
        "Free-riders rev and sort, 300 prompts per task, one seed and one random key per defense.\n\n"
        "## The self-test's figure: share of the defender's gain the attacker's best merge keeps\n\n"
        "(The best grid point among those keeping half of the free-rider's own gain; when none does, the best of all, "
        "conservatively.)\n\n" + table(rows) + "\n\n"
        "## Free ride: the most of both skills one merge keeps, min(defender kept, free-rider kept), best grid point\n\n"
        + free_ride_table(rows) + "\n"
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
