"""The merge trap trained against the attack family, on both toy worlds, against the strongest attacker: each term's
effect, the default's, and MergeGuard (its default, and the paper's preset) beside them.

Run by hand (rows can run in parallel processes with ``--only``; ``--from-out`` then writes the table of every
finished row):

    python benchmarks/trap_family.py [--world first|second] [--seed N] [--only ROWS] [--prompts N] [--from-out]

First world: defender ``count``, free-rider ``rev``, the trap's stand-in ``copy``: the world the trap's settings were
tuned on. Second world (``toyworld.build.SECOND_WORLD``): other skills in another prompt format (``q: SKILL of
INPUT\\na: ``), defender ``dup`` (doubled letters), free-rider ``maxd`` (the largest digit), stand-in ``alt``
(every other letter); no setting was tuned on it. In both the free-rider and every attack are held out of the trap's
training (it trains against the stand-in's task vector and random directions, never the free-rider's, and against
merge-shaped changes, not the attacks' own code). The trap's stand-in data is found by ``--trap-rider-data auto``
(the world's stand-in rows).

Cells as in ``all_defenses.py``: free ride / defender's kept share at the attacker's best (± standard error), the
fine-tuning attacks credited beyond the better of the examples alone and distillation.
"""

from __future__ import annotations

from hf_mergeguard.attacks.merges import parse_methods

from _common import measured_on, parse_args, run_settings, write_results
from all_defenses import METHODS, PROMPTS, free_ride_table, shares, trap_costs

FAMILY = "scale,dare,ties,della,lowrank,rider,layerwise,finetune"
SETTINGS = {
    "trap, issue-19 terms (scale, dare, ties, rider)": {"method": "trap", "trap": {"perturbations": "scale,dare,ties,rider"}},
    "trap, attack family (default)": {"method": "trap"},
    "trap, family without finetune": {"method": "trap", "trap": {"perturbations": FAMILY.replace(",finetune", "")}},
    "trap, family without layerwise and lowrank": {
        "method": "trap",
        "trap": {"perturbations": FAMILY.replace(",lowrank", "").replace(",layerwise", "")},
    },
    "mergeguard (default, beta 2)": {"method": "mergeguard"},
    "mergeguard-paper": {"method": "mergeguard-paper"},
}
# The attacks that fine-tune (credited beyond the examples alone and distillation); the others search merges.
FINE_TUNING_ATTACKS = ("recover", "graderase", "ftmerge")
# Defender and free-rider per world. In the second, shift is not used: an unprotected task-arithmetic merge of dup and
# shift keeps neither skill (both rewrite letters), while dup with maxd keeps 0.97 and 1.00 of the gains (see docs/results.md).
WORLDS = {"first": ("count", "rev"), "second": ("dup", "maxd")}


def goal_figures(report: dict, tasks: tuple[str, str]) -> dict:
    """The issue's four goals, measured: the free ride at the attacker's best (every merge at every grid point and
    every attack's best), the defender's highest score among results that keep half the free-rider's gain (against
    base + 5), the standalone drop, and the most a fine-tuning attack is credited."""
    task = tasks[0]
    standalone = report["standalone"]
    results = [(m["method"], m["scores"]) for m in report["merges"] if m["variant"] == "protected" and m["method"] in METHODS]
    credited = []
    for name, attack in report.get("robustness", {}).get("attacks", {}).items():
        best = attack.get("best") or {}
        if best.get("scores") and tasks[1] in best["scores"]:
            results.append((f"`{name}`", best["scores"]))
        if attack.get("credited") is not None and name in FINE_TUNING_ATTACKS:
            credited.append((attack["credited"], name))
    measured = [(shares(report, scores, tasks), name, scores) for name, scores in results]
    free_ride = max(measured, key=lambda item: item[0]["free_ride"][0])
    keeping = [item for item in measured if item[0]["freerider"][0] >= 0.5]
    highest = max(keeping, key=lambda item: item[2][task]) if keeping else None
    return {
        "free_ride": (free_ride[0]["free_ride"], free_ride[1]),
        "highest": (highest[2][task], highest[1]) if highest else None,
        "base": standalone["base"][task],
        "drop": standalone["original"][task] - standalone["protected"][task],
        "credited": max(credited) if credited else None,
    }


def goals_table(rows, tasks: tuple[str, str]) -> str:
    lines = [
        "| setting | free ride at the attacker's best (goal ≤ 0.10) | defender's best where the free-rider keeps half "
        "(goal ≤ base + 5) | standalone drop (goal ≤ 0.5 points) | most credited fine-tuning attack (goal ≤ 0.10) |",
        "|---|---|---|---|---|",
    ]
    for name, report, _ in rows:
        g = goal_figures(report, tasks)
        (ride, ride_error), ride_by = g["free_ride"]
        highest = (
            f"{100 * g['highest'][0]:.1f} ({g['highest'][1]}; base + 5 = {100 * g['base'] + 5:.1f})"
            if g["highest"]
            else "no result keeps half"
        )
        credited = f"{g['credited'][0]:.2f} (`{g['credited'][1]}`)" if g["credited"] else "–"
        lines.append(f"| {name} | {ride:.2f} ± {ride_error:.2f} ({ride_by}) | {highest} | {100 * g['drop']:.1f} | {credited} |")
    return "\n".join(lines)


def main() -> None:
    def options(parser):
        parser.add_argument("--world", choices=list(WORLDS), default="first", help="the toy world (second: the held-out one)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the training, merges and attacks")
        parser.add_argument("--only", default=None, help="comma-separated indexes of SETTINGS to run (default all)")
        parser.add_argument("--prompts", type=int, default=PROMPTS, help="prompts per task (a seeded subset below 300)")
        parser.add_argument("--from-out", action="store_true", help="no runs: the table from the finished settings in --out")

    args = parse_args(__doc__, "trap-family", "trap_family.md", options)
    import json

    from hf_mergeguard.toyworld.build import SECOND_WORLD, ToyWorldConfig, build_toy_world

    world = build_toy_world(config=SECOND_WORLD if args.world == "second" else ToyWorldConfig())
    defender, rider = WORLDS[args.world]
    tasks = (world.task_name(defender), world.task_name(rider))
    names = list(SETTINGS)
    chosen = [names[int(i)] for i in args.only.split(",")] if args.only else names
    settings = {
        name: {**SETTINGS[name], "run": {"seed": args.seed}, "trap": {"seed": args.seed, **SETTINGS[name].get("trap", {})}}
        for name in chosen
    }
    settings = {name: {**s, "mergeguard": {"stage1": {"seed": args.seed}}} for name, s in settings.items()}
    folders = {name: f"{args.world}-seed{args.seed}-setting-{names.index(name)}" for name in settings}
    if args.from_out:
        done = [name for name in settings if (args.out / folders[name] / "selftest.json").is_file()]
        rows = [(name, json.loads((args.out / folders[name] / "selftest.json").read_text()), None) for name in done]
    else:
        selftest = {
            "methods": [m.name for m in parse_methods(None)],
            "attacks": ["all"],
            "limit": args.prompts if args.prompts < PROMPTS else None,
        }
        rows = run_settings(
            settings, args.out, riders=(rider,), selftest=selftest, folders=list(folders.values()), world=world, defender=defender
        )
    text = (
        f"# The merge trap against the attack family: the {args.world} toy world, seed {args.seed}\n\n"
        + measured_on("trap_family.py")
        + f" `--world {args.world} --seed {args.seed}`.\n\n"
        f"Toy world (not an LLM figure). Defender {defender}, free-rider {rider} (held out of the trap's training: the trap "
        f"trains against the stand-in `{world.config.stand_in}` and random directions), {args.prompts} prompts per task, "
        "every default merge method at every grid point, every adaptive attack."
        + (" Rows: the settings of a run cut short that had finished (`--from-out`)." if args.from_out else "")
        + "\n\n## The goals (issue 22)\n\n"
        + goals_table(rows, tasks)
        + "\n\n## Free ride / defender's kept share (± standard error)\n\n"
        + free_ride_table(rows, tasks)
        + "\n\n"
        + ("Seconds of each protection: " if args.from_out else "Seconds per run (protect + self-test + attacks): ")
        + trap_costs(rows)
        + ".\n"
    )
    write_results(args.results.with_name(f"trap_family_{args.world}_seed{args.seed}.md"), text)


if __name__ == "__main__":
    main()
