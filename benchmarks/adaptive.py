"""Every defense against every adaptive attack on the toy world.

Run by hand (about 5 minutes on 2 CPU cores once the toy world is cached):

    python benchmarks/adaptive.py [--out DIR] [--results benchmarks/results/adaptive.md]

Defender: the ``count`` fine-tune; free-rider: ``rev``; merges TA, TIES, DARE-TIES (the attacker's best
coefficient); the fine-tuning attacks get 64 examples of the defender's data and 30 steps. Keys are random.
"""

from __future__ import annotations

from pathlib import Path

from _common import attack_cells, attack_names, attack_text, measured_on, parse_args, run_settings, write_results

DEFENSES = ["mergeguard", "params", "mergelock", "mergebarrier", "mergeguard+mergelock"]


def run(out: Path) -> list[tuple[str, dict, float]]:
    methods = ["task_arithmetic", "ties", "dare_ties"]
    return run_settings({d: {"method": d} for d in DEFENSES}, out, riders=("rev",), selftest={"methods": methods})


def table(rows) -> str:
    lines = [
        "| defense | count, protected | best plain merge keeps | " + " | ".join(attack_names()) + " | examples alone | verdict |",
        "|---" * (5 + len(attack_names())) + "|",
    ]
    for defense, report, _ in rows:
        cells = attack_cells(report, lambda name, attack: attack_text(attack))
        data_only = report["robustness"]["attacks"]["recover"]["details"]["setup"]["data_only"]
        plain = report["gates"]["merged_retention"]["value"]
        lines.append(
            f"| {defense} | {100 * report['standalone']['protected']['toy_count']:.1f} | {plain:.2f} | "
            + " | ".join(cells)
            + f" | {100 * data_only['defender_score']:.1f} | {'passes' if report['passed'] else 'fails'} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__, "adaptive-attacks", "adaptive.md")
    rows = run(args.out)
    standalone = rows[0][1]["standalone"]
    original, base = 100 * standalone["original"]["toy_count"], 100 * standalone["base"]["toy_count"]
    text = (
        "# Adaptive attacks on the toy world\n\n" + measured_on("adaptive.py") + "\n\n"
        f"Defender count (original {original:.1f}, base {base:.1f}), free-rider rev, merges TA/TIES/DARE-TIES, 300 prompts per task, "
        "64 attacker examples and 30 steps for graderase/recover, one random key per defense. Cells: the attacker's "
        "merged count score (share of the gain kept) and the share credited to the attack (fine-tuning attacks: "
        "beyond what the free-rider fine-tuned on the same examples reaches, the 'examples alone' column); an attack "
        "defeats the defense when its credited share exceeds the 25% gate.\n\n"
        + table(rows)
        + "\n\n"
        + "Seconds per run (protect + self-test + attacks): "
        + ", ".join(f"{d} {s:.0f}" for d, _, s in rows)
        + ".\n"
    )
    write_results(args.results, text)


if __name__ == "__main__":
    main()
