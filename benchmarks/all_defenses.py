"""Every defense side by side on the toy world against the strongest attacker: every default merge method, every
adaptive attack, the free ride and the defender's kept share with standard errors.

Run by hand (rows can run in parallel processes with ``--only``; ``--from-out`` then writes the table of every
finished row):

    python benchmarks/all_defenses.py [--out DIR] [--results benchmarks/results/all_defenses.md] [--seed N] [--only ROWS]

Defender: the ``count`` fine-tune; free-rider: ``rev``; the self-test's default merge methods at every grid point
(scored on every prompt: no race); every adaptive attack (64 defender examples, 30 steps for the ones that train).
Same world and seed for every row; function-preserving keys are random; the trap's stand-in free-rider is the base
fine-tuned on ``copy`` (a skill no model of the world learned). Scores are on 300 prompts.

Per method and attack: the **free ride** (the most of both skills one merge keeps: min of the defender's and the
free-rider's kept shares, at the grid point where it is largest) and the **defender's kept share** at the attacker's
best (the most of the defender's gain among the merges that keep half the free-rider's, else of all). ± is the
standard error from the binomial errors of the merge's, the original's and the base's scores (delta method). The
fine-tuning attacks are credited beyond the better of the examples alone and distillation (``credited``).
"""

from __future__ import annotations

import math

from hf_mergeguard.attacks.merges import parse_methods

from _common import attack_names, measured_on, parse_args, run_settings, write_results

DEFENSES = {
    "mergeguard": {"method": "mergeguard"},
    "params": {"method": "params"},
    "mergelock": {"method": "mergelock"},
    "mergebarrier": {"method": "mergebarrier"},
    "trap": {"method": "trap"},
    "trap without rider data (random stand-in)": {"method": "trap", "trap": {"rider_data": None}},  # None: the default
    "trap+mergeguard": {"method": "trap+mergeguard"},
    "trap+mergelock": {"method": "trap+mergelock"},
}
METHODS = [method.name for method in parse_methods(None)]  # the self-test's defaults
PROMPTS = 300  # the toy world's test split; --prompts takes a seeded subset (the same for every model)
TASK, RIDER_TASK = "toy_count", "toy_rev"


def points(score: float, prompts: int = PROMPTS) -> str:
    """A score in points with its binomial standard error."""
    return f"{100 * score:.1f} ± {100 * math.sqrt(score * (1 - score) / prompts):.1f}"


def prompts_of(report: dict) -> int:
    """Prompts per task the report's scores are on."""
    return min(PROMPTS, report["config"].get("limit") or PROMPTS)


def best_merged(report: dict, method: str, task: str = TASK) -> dict:
    """The attacker's best merge of ``method``: the highest defender score at any coefficient (what the goal bounds)."""
    merges = [m for m in report["merges"] if m["variant"] == "protected" and m["method"] == method]
    return max(merges, key=lambda m: m["scores"][task])


def attack_score(report: dict, attack: str) -> float:
    """The defender score of the attack's best result (its best merge, or the fine-tuned merge)."""
    return report["robustness"]["attacks"][attack]["best"]["defender_score"]


def goal(report: dict, task: str = TASK) -> tuple[bool, float]:
    """(goal met, the highest defender score any merge or attack reached)."""
    base, original = report["standalone"]["base"][task], report["standalone"]["original"][task]
    highest = max(best_merged(report, m, task)["scores"][task] for m in METHODS)
    for attack in report.get("robustness", {}).get("attacks", {}):
        highest = max(highest, attack_score(report, attack))
    kept = report["standalone"]["protected"][task] >= original - 0.01
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


def kept_with_error(score: float, base: float, original: float, prompts: int) -> tuple[float, float]:
    """(kept share of the gain, its standard error): (s - b) / (o - b), the binomial errors of s, o and b carried
    through by the delta method."""
    gain = original - base
    kept = (score - base) / gain
    variance = (score * (1 - score) + kept**2 * original * (1 - original) + (1 - kept) ** 2 * base * (1 - base)) / prompts
    return kept, math.sqrt(variance) / abs(gain)


def shares(report: dict, scores: dict, tasks: tuple[str, str] = (TASK, RIDER_TASK)) -> dict:
    """The defender's and the free-rider's kept shares of a merge's ``scores``, with errors, and the free ride."""
    standalone = report["standalone"]
    n = prompts_of(report)
    task, rider_task = tasks
    defender = kept_with_error(scores[task], standalone["base"][task], standalone["original"][task], n)
    rider = kept_with_error(scores[rider_task], standalone["base"][rider_task], standalone["freerider0"][rider_task], n)
    return {"defender": defender, "freerider": rider, "free_ride": min(defender, rider, key=lambda pair: pair[0])}


def share_text(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.2f} ± {pair[1]:.2f}"


def method_cell(report: dict, method: str, variant: str = "protected", tasks: tuple[str, str] = (TASK, RIDER_TASK)) -> str:
    """The free ride at the method's best grid point for it / the defender's kept share at the attacker's best."""
    merges = [m for m in report["merges"] if m["variant"] == variant and m["method"] == method and m.get("prompts") is None]
    free_riding = max((shares(report, m["scores"], tasks) for m in merges), key=lambda s: s["free_ride"][0])
    best = report["best"][method][variant]
    return f"{share_text(free_riding['free_ride'])} / {share_text(shares(report, best['scores'], tasks)['defender'])}"


def attack_cell(report: dict, name: str, tasks: tuple[str, str] = (TASK, RIDER_TASK)) -> str:
    """An attack's best result: free ride / defender's kept share (and what is credited when it is not that share)."""
    attack = report["robustness"]["attacks"].get(name)
    if attack is None:
        return "not run"
    if attack["details"].get("applies") is False:
        return "does not apply (the plain merges stand)"
    best = attack["best"]
    if best.get("scores") is None or tasks[1] not in best["scores"]:
        return "–"
    measured = shares(report, best["scores"], tasks)
    text = f"{share_text(measured['free_ride'])} / {share_text(measured['defender'])}"
    if attack["credited"] is None:
        return text + " (reference)"
    if abs(attack["credited"] - measured["defender"][0]) > 1e-9:
        text += f", credited {attack['credited']:.2f}"
    return text + (" **defeats**" if attack["defeats"] else "")


def free_ride_table(rows, tasks: tuple[str, str] = (TASK, RIDER_TASK)) -> str:
    """Rows: the merge methods then the attacks; columns: unprotected, then each defense."""
    task = tasks[0]
    skill = task.removeprefix("toy_")
    header = ["method or attack", "unprotected", *(name for name, _, _ in rows)]
    lines = [_table_row(header), "|---" * len(header) + "|"]
    first = rows[0][1]
    lines.append(
        _table_row(
            [f"standalone score ({skill})", points(first["standalone"]["original"][task], prompts_of(first))]
            + [points(report["standalone"]["protected"][task], prompts_of(report)) for _, report, _ in rows]
        )
    )
    for method in METHODS:
        lines.append(
            _table_row([method, method_cell(first, method, "original", tasks)] + [method_cell(r, method, tasks=tasks) for _, r, _ in rows])
        )
    for name in attack_names():
        lines.append(_table_row([f"`{name}`", "–"] + [attack_cell(r, name, tasks) for _, r, _ in rows]))
    highest = [goal(r, task) for _, r, _ in rows]
    base = points(first["standalone"]["base"][task], prompts_of(first))
    lines.append(_table_row([f"highest {skill} any merge or attack reached (base {base})", "–"] + [f"{100 * h:.1f}" for _, h in highest]))
    return "\n".join(lines)


def attacks_table(rows) -> str:
    """The attacks' defender scores (count points), for comparison with the old tables."""
    attacks = attack_names()
    lines = ["| defense | " + " | ".join(attacks) + " |", "|---" * (1 + len(attacks)) + "|"]
    for name, report, _ in rows:
        lines.append(
            f"| {name} | "
            + " | ".join(points(report["robustness"]["attacks"][a]["best"]["defender_score"], prompts_of(report)) for a in attacks)
            + " |"
        )
    return "\n".join(lines)


def trap_costs(rows) -> str:
    parts = []
    for name, report, seconds in rows:
        trap = [p for p in report["protection"] if p["method"] == "trap"]
        cost = f", trap {trap[0]['details']['training']['seconds_per_step']:.2f} s/step" if trap else ""
        seconds = seconds if seconds is not None else report.get("protect_seconds")
        parts.append(f"{name}{f' {seconds:.0f} s' if seconds is not None else ''}{cost}")
    return "; ".join(parts)


def main() -> None:
    def options(parser):
        parser.add_argument("--seed", type=int, default=0, help="seed of the training, merges and attacks (keys are random anyway)")
        parser.add_argument("--only", default=None, help="comma-separated rows of DEFENSES to run (default all)")
        parser.add_argument("--prompts", type=int, default=PROMPTS, help="prompts per task (a seeded subset below 300)")
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
    # One folder per row of DEFENSES (its index there), so rows run in parallel processes land apart.
    folders = {name: f"setting-{list(DEFENSES).index(name)}" for name in settings}
    if args.from_out:
        import json

        done = [name for name in settings if (args.out / folders[name] / "selftest.json").is_file()]
        rows = [(name, json.loads((args.out / folders[name] / "selftest.json").read_text()), None) for name in done]
    else:
        selftest = {"methods": METHODS, "attacks": ["all"], "limit": args.prompts if args.prompts < PROMPTS else None}  # ftmerge too
        rows = run_settings(settings, args.out, riders=("rev",), selftest=selftest, folders=list(folders.values()))
    text = (
        "# Every defense on the toy world, against the strongest attacker\n\n" + measured_on("all_defenses.py") + f" Seed {args.seed}.\n\n"
        f"Toy world (not an LLM figure). Defender count, free-rider rev, {args.prompts} prompts per task (a seeded subset of "
        "300 below 300), defaults of every defense, "
        "one random key per function-preserving defense, every default merge method at every grid point, every adaptive attack."
        + (" Rows: the settings of a run cut short that had finished (`--from-out`)." if args.from_out else "")
        + "\n\n"
        "## Free ride / defender's kept share (± standard error)\n\n"
        "Free ride: the most of both skills one merge keeps (min of the two kept shares, at its best grid point); defender's "
        "kept share: at the attacker's best (the most of the count gain among merges keeping half of rev's gain). Fine-tuning "
        "attacks are credited only beyond the better of the examples alone and distillation (`distill`, a reference).\n\n"
        + free_ride_table(rows)
        + "\n\n## The attacks' count scores\n\n"
        + attacks_table(rows)
        + "\n\n"
        + (
            "Seconds of each protection alone (`--from-out`: the runs' own times are in their logs): "
            if args.from_out
            else "Seconds per run (protect + self-test + attacks): "
        )
        + trap_costs(rows)
        + ".\n"
    )
    write_results(args.results, text)


if __name__ == "__main__":
    main()
