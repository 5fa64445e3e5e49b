"""``--plan`` for the toy world and for the Llama-3.2-1B and Llama-3.1-8B shapes, for MergeGuard and the trap; and the
plan's CPU estimate of the demo against the demo's measured time (issue 20).

Run by hand (about 6 minutes on 2 CPU cores: the demo runs once, cold, in a fresh cache):

    python benchmarks/plan_figures.py [--no-demo]

The LLM shapes need only their ``config.json`` (written here, no weights); their tasks are GSM8K (the defender) and
ARC-Easy (the free-rider), sized from the table of known test splits. Every figure is ``hf_mergeguard.plan``'s
estimate, not a measurement, except the demo's wall-clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import measured_on, parse_args, write_results

CASES = [
    ("mergeguard (defaults)", ["--method", "mergeguard"]),
    ("trap, LoRA 16 + checkpointing", ["--method", "trap", "--trap-lora-rank", "16", "--gradient-checkpointing"]),
    (
        "trap, LoRA 16 + checkpointing, issue 19's terms only",
        ["--method", "trap", "--trap-lora-rank", "16", "--gradient-checkpointing", "--trap-perturbations", "scale,dare,ties,rider"],
    ),
]
BUDGETS = (8, 4, 3, 2)
HARDWARE = [("1 x H100", ["--plan-gpu-type", "h100"]), ("8 x H100", ["--plan-gpus", "8", "--plan-gpu-type", "h100"])]


def plan(argv: list[str], refused_ok: bool = False) -> dict:
    """The plan's JSON; ``refused_ok``: a refusal (exit 2, e.g. a budget nothing fits) comes back as {"refused": line}."""
    done = subprocess.run([sys.executable, "-m", "hf_mergeguard.cli.main", *argv, "--plan", "--json"], capture_output=True, text=True)
    if done.returncode == 2 and refused_ok:
        return {"refused": done.stderr.strip().splitlines()[0]}
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout)


def shape_folders(root: Path, name: str, sizes) -> dict:
    from hf_mergeguard.testing import llama_config

    folders = {}
    for role in ("model", "base", "rider"):
        folder = root / name / role
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({**llama_config(sizes), "torch_dtype": "bfloat16"}))
        folders[role] = str(folder)
    return folders


def row(label: str, hardware: str, p: dict) -> str:
    t = p["totals"]
    hours = t["estimated_seconds"] / 3600
    return (
        f"| {label} | {hardware} | {t['merges']} | {t['scorings']:g} | {t['prompts']:,} | {t['generated_tokens_upper_bound']:,} | "
        f"{t['training_steps']} | {max((s['peak_memory_gb'] or 0) for s in p['stages']):.1f} | "
        + (f"{hours:.1f} h" if hours >= 1 else f"{t['estimated_seconds'] / 60:.1f} min")
        + " |"
    )


def main() -> None:
    def options(parser):
        parser.add_argument("--no-demo", action="store_true", help="skip the demo's timing")

    args = parse_args(__doc__, None, "plan.md", extra=options)
    from hf_mergeguard.demo import DEMO_LIMIT
    from hf_mergeguard.testing import LLAMA_3_1_8B, LLAMA_3_2_1B

    lines = [
        "# `--plan`: what a self-tested protection costs, before it runs",
        "",
        measured_on("plan_figures.py"),
        "",
        "Every figure is `hf_mergeguard.plan`'s estimate (a throughput table and the memory model), not a measurement, "
        "except the demo's wall-clock below. Defender task GSM8K (1,319 prompts, 5-shot, up to 256 new tokens), "
        "free-rider task ARC-Easy (2,376, log-likelihood), one free-rider, every merge method, the adaptive attacks on "
        "(their fine-tunes as LoRAs for the trap), the race (3 rounds, the best 2 of each method on every prompt) priced as if "
        "nothing were dropped early. Peak: the largest modelled stage, per device.",
        "",
        "| shape and method | hardware | merges | scorings (full-set equivalents) | prompts | generated tokens (upper bound) | "
        "training steps | peak GB | estimated time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    plans = {}
    budget_lines = [
        "",
        "`--budget-hours` on the Llama-3.1-8B trap (LoRA 16 + checkpointing) on 1 x H100: the plan of the cut run.",
        "",
        "| budget | estimate | merges | generated tokens (upper bound) | cut |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for shape_name, sizes in (("Llama-3.2-1B", LLAMA_3_2_1B), ("Llama-3.1-8B", LLAMA_3_1_8B)):
            folders = shape_folders(Path(tmp), shape_name, sizes)
            common = ["protect", folders["model"], "--base", folders["base"], "--tasks", "gsm8k", "--merge-with", folders["rider"]]
            common += ["--freerider-tasks", "arc_easy", "--train-data", "train.jsonl", "--output-dir", str(Path(tmp) / "out")]
            for case, extra in CASES:
                lora = ["--attack-lora-rank", "16"] if "trap" in case else []
                for hardware, flags in HARDWARE:
                    p = plan(common + extra + lora + flags)
                    plans[f"{shape_name} {case} {hardware}"] = p
                    lines.append(row(f"{shape_name}, {case}", hardware, p))
            if shape_name == "Llama-3.1-8B":  # --budget-hours on the trap's 1-GPU run
                trap = common + CASES[1][1] + ["--attack-lora-rank", "16"] + HARDWARE[0][1]
                for hours in BUDGETS:
                    p = plan(trap + ["--budget-hours", str(hours)], refused_ok=True)
                    plans[f"{shape_name} trap budget {hours} h"] = p
                    if "refused" in p:
                        budget_lines.append(f"| {hours} h | - | - | - | refused before any work: {p['refused']} |")
                        continue
                    budget_lines.append(
                        f"| {hours} h | {p['totals']['estimated_seconds'] / 3600:.1f} h | {p['totals']['merges']} | "
                        f"{p['totals']['generated_tokens_upper_bound']:,} | {'; '.join(p['budget']['dropped']) or 'nothing'} |"
                    )

    demo_line = []
    if not args.no_demo:
        from hf_mergeguard.toyworld import ToyWorld, ToyWorldConfig

        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "HF_MERGEGUARD_CACHE": str(Path(tmp) / "cache")}
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "hf_mergeguard.cli.main", "demo", "--out", str(Path(tmp) / "demo")],
                env=env,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - started
            if done.returncode not in (0, 1):
                raise SystemExit(done.stderr[-2000:])
            print(f"demo, cold: {seconds:.0f} s", flush=True)
            world = ToyWorld(Path(tmp) / "demo", ToyWorldConfig())  # the demo's world (seed 0), as it wrote it
            argv = ["protect", str(world.model("count")), "--base", str(world.base), "--tasks", "toy_count"]
            argv += ["--include-tasks", str(world.tasks), "--train-data", str(world.data("count", "train"))]
            for skill in ("sort", "rev"):
                argv += ["--merge-with", str(world.model(skill))]
            argv += ["--freerider-tasks", "toy_sort", "--freerider-tasks", "toy_rev", "--limit", str(DEMO_LIMIT), "--batch-size", "128"]
            argv += ["--output-dir", str(Path(tmp) / "x"), "--plan-gpu-type", "cpu"]
            p = plan(argv)
            plans["toy world demo"] = p
            lines.append(row("toy world (the demo's protect)", "this CPU", p))
            demo_line = [
                "",
                f"The demo, cold (toy world built, then protected and self-tested with every attack) took {seconds:.0f} s on this "
                f"machine; the plan estimates its `protect` at {p['totals']['estimated_seconds']:.0f} s (the world's build, "
                "about a minute, is not in the plan).",
            ]
    lines += demo_line + budget_lines
    write_results(args.results, "\n".join(lines) + "\n")
    args.results.with_suffix(".json").write_text(json.dumps(plans, indent=2))


if __name__ == "__main__":
    main()
