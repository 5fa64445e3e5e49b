"""Every defense against every adaptive attack on the toy world.

Run by hand (about 10 minutes on 2 CPU cores once the toy world is cached):

    python benchmarks/adaptive.py [--out DIR] [--results benchmarks/results/adaptive.md]

Defender: the ``count`` fine-tune; free-rider: ``rev``; merges TA, TIES, DARE-TIES (the attacker's best
coefficient); the fine-tuning attacks get 64 examples of the defender's data and 30 steps. Keys are random.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

from hf_mergeguard.attacks.adaptive import ATTACKS
from hf_mergeguard.config import build_protect_config
from hf_mergeguard.errors import GateFailedError
from hf_mergeguard.pipeline import protect
from hf_mergeguard.toyworld import build_toy_world

DEFENSES = ["mergeguard", "params", "mergelock", "mergebarrier", "mergeguard+mergelock"]


def run(out: Path) -> list[tuple[str, dict, float]]:
    world = build_toy_world()
    common = dict(
        model=str(world.model("count")), base=str(world.base), tasks=["toy_count"], include_tasks=[str(world.tasks)],
        train_data=str(world.data("count", "train")), merge_with=[str(world.model("rev"))], freerider_tasks=["toy_rev"],
        overwrite=True, selftest={"batch_size": 128, "methods": ["task_arithmetic", "ties", "dare_ties"]},
    )
    rows = []
    for defense in DEFENSES:
        config = build_protect_config(None, dict(common, method=defense, output_dir=str(out / defense)))
        started = time.perf_counter()
        try:
            report = protect(config)
        except GateFailedError as failed:
            report = failed.report
        rows.append((defense, report, time.perf_counter() - started))
        print(defense, f"{rows[-1][2]:.0f} s", flush=True)
    return rows


def table(rows) -> str:
    lines = [
        "| defense | count, protected | best plain merge keeps | " + " | ".join(ATTACKS) + " | examples alone | verdict |",
        "|---" * (5 + len(ATTACKS)) + "|",
    ]
    for defense, report, _ in rows:
        robustness = report["robustness"]
        cells = []
        for attack in ATTACKS:
            row = next(r for r in robustness["rows"] if r["attack"] == attack)
            cells.append(f"{row['score']}, credited {row['credited_share']:.2f}{' **defeats**' if row['defeats'] != 'no' else ''}")
        data_only = robustness["attacks"]["recover"]["setup"]["data_only"]
        plain = report["gates"]["merged_retention"]["value"]
        lines.append(f"| {defense} | {100 * report['standalone']['protected']['toy_count']:.1f} | {plain:.2f} | " + " | ".join(cells)
                     + f" | {100 * data_only['defender_score']:.1f} | {'passes' if report['passed'] else 'fails'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("adaptive-attacks"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "adaptive.md")
    args = parser.parse_args()
    rows = run(args.out)
    text = (
        "# Adaptive attacks on the toy world\n\n"
        f"Measured {datetime.date.today().isoformat()} on {platform.node() or 'unknown'} "
        f"({platform.processor() or platform.machine()}, CPU only) with `python benchmarks/adaptive.py`.\n\n"
        "Defender count (original 99.0, base 71.0), free-rider rev, merges TA/TIES/DARE-TIES, 300 prompts per task, "
        "64 attacker examples and 30 steps for graderase/recover, one random key per defense. Cells: the attacker's "
        "merged count score (share of the gain kept) and the share credited to the attack (fine-tuning attacks: "
        "beyond what the free-rider fine-tuned on the same examples reaches, the 'examples alone' column); an attack "
        "defeats the defense when its credited share exceeds the 25% gate.\n\n" + table(rows) + "\n\n"
        + "Seconds per run (protect + self-test + attacks): " + ", ".join(f"{d} {s:.0f}" for d, _, s in rows) + ".\n"
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
