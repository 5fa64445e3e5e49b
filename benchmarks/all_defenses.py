"""Every defense side by side on the toy world: every merge method, every adaptive attack, the issue-10 goal.

Run by hand (about 27 minutes for all eight rows, one CPU thread, once the toy world is cached):

    python benchmarks/all_defenses.py [--out DIR] [--results benchmarks/results/all_defenses.md] [--seed N] [--only ROWS]

Defender: the ``count`` fine-tune; free-rider: ``rev``; all nine merge methods at the attacker's best coefficient;
the four adaptive attacks (64 defender examples, 30 steps for the fine-tuning ones). Same world and seed for every
row; function-preserving keys are random; the trap's stand-in free-rider is the base fine-tuned on ``copy``
(a skill no model of the world learned). Scores are on 300 prompts: ± is the binomial standard error.
The goal: the best merge of each method and every attack stays at most 5 points above the base's score
while the protected model stays within 1 point of the original.
"""

from __future__ import annotations

import math

from _common import attack_cells, attack_names, measured_on, parse_args, run_settings, write_results

DEFENSES = {
    "mergeguard": {"method": "mergeguard"},
    "params": {"method": "params"},
    "mergelock": {"method": "mergelock"},
    "mergebarrier": {"method": "mergebarrier"},
    "trap": {"method": "trap"},
    "trap, random stand-in (no rider data)": {"method": "trap", "trap": {"rider_data": None}},  # None: the default
    "trap+mergeguard": {"method": "trap+mergeguard"},
    "trap+mergelock": {"method": "trap+mergelock"},
}
METHODS = ["task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "della", "linear", "model_stock", "slerp"]
PROMPTS = 300
TASK, RIDER_TASK = "toy_count", "toy_rev"


def points(score: float) -> str:
    """A score in points with its binomial standard error."""
    return f"{100 * score:.1f} ± {100 * math.sqrt(score * (1 - score) / PROMPTS):.1f}"


def best_merged(report: dict, method: str) -> dict:
    """The attacker's best merge of ``method``: the highest defender score at any coefficient (what the goal bounds)."""
    merges = [m for m in report["merges"] if m["variant"] == "protected" and m["method"] == method]
    return max(merges, key=lambda m: m["scores"][TASK])


def attack_score(report: dict, attack: str) -> float:
    """The defender score of the attack's best result (its best merge, or the fine-tuned merge)."""
    return report["robustness"]["attacks"][attack]["best"]["defender_score"]


def goal(report: dict) -> tuple[bool, float]:
    """(goal met, the highest defender score any merge or attack reached)."""
    base, original = report["standalone"]["base"][TASK], report["standalone"]["original"][TASK]
    highest = max(best_merged(report, m)["scores"][TASK] for m in METHODS)
    for attack in report.get("robustness", {}).get("attacks", {}):
        highest = max(highest, attack_score(report, attack))
    kept = report["standalone"]["protected"][TASK] >= original - 0.01
    return kept and highest <= base + 0.05, highest


def _table_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def merges_table(rows, methods=METHODS, first_column="defense", extra=None) -> str:
    """The attacker's best count score per method (rev's in brackets), one row per run, the unprotected merges
    first. ``extra``: (header, report -> cell) for one more column."""
    first = rows[0][1]
    more = [extra[0]] if extra else []
    header = [first_column, "count, protected", *methods, *more]
    unprotected = [
        f"none (original {points(first['standalone']['original'][TASK])}; base {points(first['standalone']['base'][TASK])})",
        "–",
        *(
            points(max(m["scores"][TASK] for m in first["merges"] if m["variant"] == "original" and m["method"] == method))
            for method in methods
        ),
        *(["–"] if extra else []),
    ]
    lines = [_table_row(header), "|---" * len(header) + "|", _table_row(unprotected)]
    for name, report, _ in rows:
        cells = [name, points(report["standalone"]["protected"][TASK])]
        for method in methods:
            merge = best_merged(report, method)
            cells.append(f"{points(merge['scores'][TASK])} (rev {100 * merge['scores'][RIDER_TASK]:.0f})")
        lines.append(_table_row(cells + ([extra[1](report)] if extra else [])))
    return "\n".join(lines)


def attacks_table(rows) -> str:
    attacks = attack_names()
    lines = [
        "| defense | " + " | ".join(attacks) + " | examples alone | goal met | highest count reached |",
        "|---" * (4 + len(attacks)) + "|",
    ]
    for name, report, _ in rows:
        cells = attack_cells(report, lambda name, attack: points(attack["best"]["defender_score"]))
        data_only = report["robustness"]["attacks"]["recover"]["details"]["setup"]["data_only"]
        met, highest = goal(report)
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {points(data_only['defender_score'])} | {'yes' if met else 'no'} | {100 * highest:.1f} |"
        )
    return "\n".join(lines)


def trap_costs(rows) -> str:
    parts = []
    for name, report, seconds in rows:
        trap = [p for p in report["protection"] if p["method"] == "trap"]
        cost = f", trap {trap[0]['details']['training']['seconds_per_step']:.2f} s/step" if trap else ""
        parts.append(f"{name}{f' {seconds:.0f} s' if seconds is not None else ''}{cost}")
    return "; ".join(parts)


def main() -> None:
    def options(parser):
        parser.add_argument("--seed", type=int, default=0, help="seed of the training, merges and attacks (keys are random anyway)")
        parser.add_argument("--only", default=None, help="comma-separated rows of DEFENSES to run (default all)")
        parser.add_argument(
            "--from-out", action="store_true", help="no runs: the table from the finished settings already in --out (a cut-short run)"
        )

    args = parse_args(__doc__, "all-defenses", "all_defenses.md", options)
    from hf_mergeguard.toyworld import build_toy_world

    stand_in = str(build_toy_world().stand_in_data())  # the trap's stand-in free-rider: the base fine-tuned on copy
    chosen = {name: overrides for name, overrides in DEFENSES.items() if args.only is None or name in args.only.split(",")}
    # --seed as on the command line: training (the trap, stage 1), merges and attacks.
    settings = {
        name: {
            **overrides,
            "run": {"seed": args.seed},
            "mergeguard": {"stage1": {"seed": args.seed}},
            "trap": {"rider_data": stand_in, "seed": args.seed, **overrides.get("trap", {})},
        }
        for name, overrides in chosen.items()
    }
    if args.from_out:
        import json

        done = [(index, name) for index, name in enumerate(settings) if (args.out / f"setting-{index}" / "selftest.json").is_file()]
        rows = [(name, json.loads((args.out / f"setting-{index}" / "selftest.json").read_text()), None) for index, name in done]
    else:
        rows = run_settings(settings, args.out, riders=("rev",), selftest={"methods": METHODS})
    text = (
        "# Every defense on the toy world\n\n" + measured_on("all_defenses.py") + f" Seed {args.seed}.\n\n"
        "Defender count, free-rider rev, 300 prompts per task (± binomial standard error), defaults of every defense, "
        "one random key per function-preserving defense."
        + (" Rows: the settings of a run cut short that had finished (`--from-out`)." if args.from_out else "")
        + "\n\n"
        "## The attacker's best merge per method (count score, rev score of that merge in brackets)\n\n" + merges_table(rows) + "\n\n"
        "## Adaptive attacks (count score after the attack; credited: share of the gain beyond what the examples alone give)\n\n"
        + attacks_table(rows)
        + "\n\n"
        "Seconds per run (protect + self-test + attacks): " + trap_costs(rows) + ".\n"
    )
    write_results(args.results, text)


if __name__ == "__main__":
    main()
