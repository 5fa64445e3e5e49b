"""The attacker's search on a budget against the full grid, on the toy world (issue 20).

Run by hand (about 30 minutes on 2 CPU cores for all three cases):

    python benchmarks/budgeted_search.py [--seed 0] [--cases check,thorough,negation]

For each case it runs the self-test matrix twice with every merge method on every prompt of the toy world's tasks (no
``--limit``): the full grid (``--race-rounds 1``) and the race (the defaults: 3 rounds, the best 2 points of each method and
variant on every prompt), with empty score caches, counting what ``generate`` computed (rows x new positions of each
batch, the compute spent) and what it kept (tokens before padding). It reports the attacker's best per method for
both, whether they are the same grid point or within one standard error of each other, the verdicts, and the ratio
of generated tokens. The cases: ``check``, the count fine-tune as it is (merged with the rev fine-tune), with the
default grids (about 3 points per method); ``thorough``, the same with ``--thorough``'s finer grids (about 6);
``negation``, a protected variant (MergeGuard's negation, stage 2 only, with its defaults) with the unprotected
original, as ``protect`` runs it.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from _common import measured_on, parse_args, write_results

COUNTED = {"computed": 0, "kept": 0, "calls": 0}


def count_generation() -> None:
    """Wrap ``GenerationMixin.generate``: count every batch's new positions (computed) and non-pad tokens (kept)."""
    import transformers

    original = transformers.GenerationMixin.generate

    def counting(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        inputs = kwargs.get("input_ids", args[0] if args else None)
        new = out[:, inputs.shape[1] :]
        pad = kwargs.get("pad_token_id", self.generation_config.pad_token_id)
        COUNTED["computed"] += new.numel()
        COUNTED["kept"] += int((new != pad).sum()) if pad is not None else new.numel()
        COUNTED["calls"] += 1
        return out

    transformers.GenerationMixin.generate = counting


def negated(world, folder: Path) -> Path:
    """The count fine-tune protected by MergeGuard's negation alone (stage 2 with its defaults, exact criticality)."""
    from hf_mergeguard.config import build_protect_config
    from hf_mergeguard.pipeline import protect

    config = build_protect_config(
        None,
        {
            "model": str(world.model("count")),
            "base": str(world.base),
            "tasks": ["toy_count"],
            "include_tasks": [str(world.tasks)],
            "merge_with": [str(world.model("rev"))],
            "freerider_tasks": ["toy_rev"],
            "output_dir": str(folder / "protected"),
            "work_dir": str(folder / "work"),
            "method": "mergeguard",
            "mergeguard": {"criticality": "exact"},
            "selftest": {"adaptive": False, "methods": ["task_arithmetic"], "limit": 16},
        },
    )
    protect(config, progress=False)
    return folder / "protected"


def run_case(world, protected: Path, original: Path | None, race_rounds: int, seed: int, thorough: bool = False) -> dict:
    from hf_mergeguard.evaluation import load_tokenizer
    from hf_mergeguard.io.checkpoint import Checkpoint
    from hf_mergeguard.selftest.config import SelfTestConfig
    from hf_mergeguard.selftest.freeriders import FreeRider, selftest_evaluator
    from hf_mergeguard.selftest.matrix import run_selftest

    config = SelfTestConfig(batch_size=128, race_rounds=race_rounds, thorough=thorough)
    riders = [FreeRider(Checkpoint(world.model("rev")), ["toy_rev"])]
    before = dict(COUNTED)
    started = time.perf_counter()
    report = run_selftest(
        base=Checkpoint(world.base),
        protected=Checkpoint(protected),
        original=Checkpoint(original) if original else None,
        tokenizer=load_tokenizer(world.base),
        evaluator=selftest_evaluator(["toy_count"], [str(world.tasks)], riders, config),
        tasks=["toy_count"],
        config=config,
        freeriders=riders,
        seed=seed,
        progress=False,
        score_cache=None,
    )
    return {
        "seconds": time.perf_counter() - started,
        "computed": COUNTED["computed"] - before["computed"],
        "kept": COUNTED["kept"] - before["kept"],
        "passed": report.gates["merged_retention"].passed,
        "retention": report.gates["merged_retention"].value,
        "best": {
            method: {variant: {"value": b.value, "score": b.defender_score, "kept": b.defender_kept} for variant, b in by.items()}
            for method, by in report.best.items()
        },
        "dropped": sum(1 for m in report.merges if m.prompts is not None),
        "merges": len(report.merges),
        "prompts": len(world.rows("count")),
    }


def compare(full: dict, raced: dict) -> list[str]:
    rows = []
    n = full["prompts"]
    for method, by in full["best"].items():
        for variant, best in by.items():
            other = raced["best"][method][variant]
            se = math.sqrt(max(best["score"] * (1 - best["score"]), 1 / n) / n)
            if other["value"] == best["value"]:
                same = "same point"
            else:
                same = "within 1 SE" if abs(other["score"] - best["score"]) <= se else "DIFFERENT"
            full_best, race_best = f"{best['value']} ({100 * best['score']:.1f})", f"{other['value']} ({100 * other['score']:.1f})"
            rows.append(f"| {method} | {variant} | {full_best} | {race_best} | {same} |")
    return rows


def main() -> None:
    def options(parser):
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--cases", default="check,thorough,negation")

    args = parse_args(__doc__, None, "budgeted_search.md", extra=options)
    from hf_mergeguard.toyworld import build_toy_world

    count_generation()
    world = build_toy_world(progress=False)
    lines = [
        "# The attacker's search on a budget vs the full grid (toy world)",
        "",
        measured_on("budgeted_search.py"),
        "",
        "Every merge method, every prompt of the toy world's tasks (300 per task), batch 128, empty score caches. "
        "Generated tokens: rows x new positions of every `generate` batch (the compute spent); kept: before padding.",
        "",
    ]
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        chosen = args.cases.split(",")
        cases = []
        if "check" in chosen:
            cases.append(("count fine-tune as it is (check), default grids", world.model("count"), None, False))
        if "thorough" in chosen:
            cases.append(("count fine-tune as it is (check), --thorough grids", world.model("count"), None, True))
        if "negation" in chosen:
            cases.append(("MergeGuard negation (protect, with the original)", negated(world, Path(tmp)), world.model("count"), False))
        for name, protected, original, thorough in cases:
            full = run_case(world, protected, original, 1, args.seed, thorough)
            raced = run_case(world, protected, original, 3, args.seed, thorough)
            ratio = raced["computed"] / full["computed"]
            kept_ratio = raced["kept"] / full["kept"]
            summary.append({"case": name, "full": full, "raced": raced, "ratio_computed": ratio, "ratio_kept": kept_ratio})
            lines += [
                f"## {name}",
                "",
                "| method | variant | full grid: best value (score) | race: best value (score) | |",
                "|---|---|---|---|---|",
                *compare(full, raced),
                "",
                f"- generated tokens: full grid {full['computed']:,} computed ({full['kept']:,} kept), race {raced['computed']:,} "
                f"({raced['kept']:,}): **{ratio:.2f}** of the full grid's compute ({raced['kept'] / full['kept']:.2f} of its kept tokens)",
                f"- verdict: full grid {'passed' if full['passed'] else 'failed'} (worst kept {full['retention']:.3f}), race "
                f"{'passed' if raced['passed'] else 'failed'} (worst kept {raced['retention']:.3f})",
                f"- the race dropped {raced['dropped']} of {raced['merges']} merges before every prompt; time {full['seconds']:.0f} s "
                f"vs {raced['seconds']:.0f} s",
                "",
            ]
    write_results(args.results, "\n".join(lines))
    args.results.with_suffix(".json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
