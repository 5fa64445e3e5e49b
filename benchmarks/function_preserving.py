"""PaRaMS, MergeLock, MergeBarrier and MergeGuard+MergeLock on the toy world, every merge method.

Run by hand (about 7 minutes on 2 CPU cores once the toy world and the unprotected scores are cached):

    python benchmarks/function_preserving.py [--out DIR] [--results benchmarks/results/function_preserving.md]

Same setting as ``mergeguard_settings.py``: defender the ``count`` fine-tune, free-riders ``rev`` and ``sort``, all
300 test prompts per task, the attacker's coefficient grid per method. Each defense draws a fresh random key.
"""

from __future__ import annotations

from pathlib import Path

from _common import measured_on, parse_args, run_settings, write_results
from mergeguard_settings import METHODS, table

SETTINGS = {
    "PaRaMS": "params",
    "MergeLock": "mergelock",
    "MergeBarrier (orthogonal part)": "mergebarrier",
    "MergeGuard (default) + MergeLock": "mergeguard+mergelock",
}


def run(out: Path) -> list[tuple[str, dict]]:
    settings = {n: {"method": m} for n, m in SETTINGS.items()}
    # The merges only: the adaptive attacks (benchmarks/adaptive.py) do not change them.
    return [(name, report) for name, report, _ in run_settings(settings, out, selftest={"adaptive": False})]


def free_ride(report: dict, variant: str, method: str) -> float:
    """The most of BOTH skills one merge keeps: max over grid points and free-riders of min(defender, free-rider)."""
    from hf_mergeguard.report.scoring import free_ride as both

    return max(both(e["defender_kept"], e["freerider_kept"]) for e in report["merges"] if e["variant"] == variant and e["method"] == method)


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
    args = parse_args(__doc__, "function-preserving", "function_preserving.md")
    rows = run(args.out)
    text = (
        "# Function-preserving defenses on the toy world\n\n" + measured_on("function_preserving.py") + "\n\n"
        "Free-riders rev and sort, 300 prompts per task, one seed and one random key per defense.\n\n"
        "## The self-test's figure: share of the defender's gain the attacker's best merge keeps\n\n"
        "(The best grid point among those keeping half of the free-rider's own gain; when none does, the best of all, "
        "conservatively.)\n\n" + table(rows) + "\n\n"
        "## Free ride: the most of both skills one merge keeps, min(defender kept, free-rider kept), best grid point\n\n"
        + free_ride_table(rows)
        + "\n"
    )
    write_results(args.results, text)


if __name__ == "__main__":
    main()
