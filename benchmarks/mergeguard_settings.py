"""MergeGuard settings on the toy world: beta x stage 1 (and a few more), every merge method.

Run by hand (about 20 minutes on 2 CPU cores cold; steps are cached under $HF_MERGEGUARD_CACHE/runs, so a rerun
only re-reads them):

    python benchmarks/mergeguard_settings.py [--out DIR] [--results benchmarks/results/mergeguard_settings.md]

Defender: the toy world's ``count`` fine-tune; free-riders: ``rev`` and ``sort``; all 300 test prompts per task;
the attacker's best coefficient per method (see docs/methods.md, "The self-test").
"""

from __future__ import annotations

from pathlib import Path

from _common import measured_on, parse_args, run_settings, write_results

SETTINGS = {
    "stage 2, beta 1 (the paper's stage 2)": {"skip_stage1": True, "beta": 1.0},
    "stage 2, beta 2 (default)": {"skip_stage1": True, "beta": 2.0},
    "stage 1 + 2, beta 1 (the paper)": {"skip_stage1": False, "beta": 1.0},
    "stage 1 + 2, beta 2": {"skip_stage1": False, "beta": 2.0},
    "stage 1 (base-mean reading) + 2, beta 2": {"skip_stage1": False, "beta": 2.0, "stage1": {"reading": "base-mean"}},
    "stage 2, beta 1, k = 30%": {"skip_stage1": True, "beta": 1.0, "mask_share": 0.3},
    "stage 2, beta 2, k = 30%": {"skip_stage1": True, "beta": 2.0, "mask_share": 0.3},
    "stage 2, beta 3": {"skip_stage1": True, "beta": 3.0},
}
METHODS = ["task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "della", "linear", "model_stock", "slerp"]


def run(out: Path) -> list[tuple[str, dict]]:
    settings = {n: {"mergeguard": mg} for n, mg in SETTINGS.items()}
    # The merges only: the adaptive attacks (benchmarks/adaptive.py) do not change them.
    return [(name, report) for name, report, _ in run_settings(settings, out, selftest={"adaptive": False})]


def table(rows: list[tuple[str, dict]]) -> str:
    first = rows[0][1]
    lines = [
        "| setting | count, protected (original {:.1f}, base {:.1f}) | ".format(
            100 * first["standalone"]["original"]["toy_count"], 100 * first["standalone"]["base"]["toy_count"]
        )
        + " | ".join(METHODS)
        + " |",
        "|---" * (2 + len(METHODS)) + "|",
        "| unprotected merges keep | | " + " | ".join(f"{first['best'][m]['original']['defender_kept']:.2f}" for m in METHODS) + " |",
    ]
    for name, report in rows:
        cells = [f"{report['best'][m]['protected']['defender_kept']:.2f}" for m in METHODS]
        lines.append(f"| {name} | {100 * report['standalone']['protected']['toy_count']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__, "mergeguard-settings", "mergeguard_settings.md")
    rows = run(args.out)
    text = (
        "# MergeGuard settings on the toy world\n\n" + measured_on("mergeguard_settings.py") + "\n\n"
        "Cells: share of the defender's skill gain over the base that the attacker's best merge keeps "
        "(free-riders rev and sort, 300 prompts per task, one seed, about +-3 points).\n\n" + table(rows) + "\n"
    )
    write_results(args.results, text)


if __name__ == "__main__":
    main()
