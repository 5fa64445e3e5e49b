"""The GPU check (issue 19): a larger synthetic world, ``protect`` end to end with the trap and MergeGuard in bf16, and
the time and peak memory of every stage.

On a machine with a GPU (minutes on one H100/H200):

    python benchmarks/gpu_check.py                      # preset "gpu": an 85 M-parameter Llama, bf16
    python benchmarks/gpu_check.py --preset cpu         # the same steps on a pico world, on CPU (what the tests run)

Steps: build the world (a base pretrained on the toy skills and three fine-tunes, in bf16 mixed precision on the
GPU), then for each protection, as an LLM runs it (the trap with ``--trap-lora-rank 16 --gradient-checkpointing``;
MergeGuard with ``--stage1 --stage1-lora-rank 16 --gradient-checkpointing``), run the pipeline's stages one by one
(pull, memory check, protect, self-test, adaptive attacks), each timed, with the device's peak memory reset before
it (GPU: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set, reset through
``/proc/self/clear_refs``). Results go to ``benchmarks/results/gpu_check-<device>.md`` with the machine and the date,
and to a JSON file next to it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from _common import measured_on, parse_args, peak_resident_mb, world_options, write_results

PRESETS = {
    # ~85 M parameters: 12 layers, 768 wide, GQA 12/4 heads, SwiGLU 2048; a character vocabulary (embeddings are tiny).
    "gpu": dict(
        world=dict(
            hidden_size=768,
            intermediate_size=2048,
            num_layers=12,
            num_heads=12,
            num_kv_heads=4,
            base_steps=1500,
            base_lr=6e-4,
            base_batch=256,
            base_warmup=100,
            finetune_steps=300,
            finetune_lr=1e-4,
            finetune_batch=64,
            bf16=True,
        ),
        selftest={"limit": 100},
        trap={"steps": 200},
        stage1={"steps": 100},
    ),
    # The pico world's sizes: seconds per stage on 2 CPU cores.
    "cpu": dict(
        world=None,
        selftest={"limit": 4, "methods": ["model_stock"], "attacks": ["unmask"]},
        trap={"steps": 2},
        stage1={"steps": 2},
    ),
}


class StageMeter:
    """Time and peak memory of each stage (the device's peak reset at the start of each)."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, device.startswith("cuda")
        self.rows: list[dict] = []

    def __call__(self, stage: str, run):
        torch = self.torch
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")
        started = time.perf_counter()
        result = run()
        if self.cuda:
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 1024**3 if self.cuda else peak_resident_mb() / 1024
        self.rows.append({"stage": stage, "seconds": time.perf_counter() - started, "peak_gb": peak})
        print(f"{stage}: {self.rows[-1]['seconds']:.1f} s, peak {peak:.2f} GB", flush=True)
        return result


def protect_in_stages(world, method: str, overrides: dict, out: Path, meter: StageMeter) -> dict:
    """``protect`` of the world's count fine-tune against rev, stage by stage (the functions ``pipeline.protect`` calls)."""
    from hf_mergeguard import pipeline
    from hf_mergeguard.config import build_protect_config
    from hf_mergeguard.training import make_accelerator

    common = dict(
        world_options(world, ("rev",)),
        method=method,
        output_dir=str(out / method),
        work_dir=str(out / f"work-{method}"),
        overwrite=True,
    )
    config = build_protect_config(None, {**common, **overrides})
    config.validate()
    accelerator = make_accelerator(config.run)
    device = config.run.device or str(accelerator.device)
    work = pipeline.work_dir_for(config)
    work.mkdir(parents=True, exist_ok=True)
    inputs = meter(f"{method}: pull", lambda: pipeline.open_inputs(config))
    checked = meter(f"{method}: memory check", lambda: pipeline.check_memory(config, inputs.model, processes=1, device=device))
    protected, results = meter(
        f"{method}: protect",
        lambda: pipeline.apply_defenses(config, inputs, work, accelerator=accelerator, device=device, progress=False),
    )
    report = meter(
        f"{method}: self-test",
        lambda: pipeline.self_test(
            config, inputs, protected, results, work, accelerator=accelerator, device=device, progress=False, protect_seconds=0.0
        ),
    )
    report = meter(
        f"{method}: adaptive attacks",
        lambda: pipeline.adaptive_attacks(config, inputs, protected, report, work, accelerator=accelerator, device=device, progress=False),
    )
    standalone = {variant: scores["toy_count"] for variant, scores in report.standalone.items()}
    return {
        "method": method,
        "memory_check": checked,
        "standalone": standalone,
        "merged_retention": report.gates["merged_retention"].value,
        "adaptive": {name: attack.credited for name, attack in report.robustness.attacks.items()} if report.robustness else {},
    }


def main() -> None:
    def options(parser):
        parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu")

    args = parse_args(__doc__, "gpu_check", "gpu_check.md", extra=options)
    import torch

    from hf_mergeguard.io.checkpoint import Checkpoint
    from hf_mergeguard.testing import PICO_WORLD
    from hf_mergeguard.toyworld import build_toy_world
    from hf_mergeguard.toyworld.build import ToyWorldConfig

    preset = PRESETS[args.preset]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.preset == "gpu" and device != "cuda":
        raise SystemExit("The gpu preset needs a GPU; run --preset cpu here.")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_MERGEGUARD_CACHE", str(args.out / "cache"))
    meter = StageMeter(device)
    config = ToyWorldConfig(**preset["world"]) if preset["world"] else PICO_WORLD
    world = meter("build the world", lambda: build_toy_world(config=config, progress=False))
    run = {"bf16": device == "cuda"}
    trap = {"run": run, "selftest": preset["selftest"], "trap": {**preset["trap"], "lora_rank": 16, "gradient_checkpointing": True}}
    stage1 = {**preset["stage1"], "lora_rank": 16, "gradient_checkpointing": True}
    mergeguard = {"run": run, "selftest": preset["selftest"], "mergeguard": {"skip_stage1": False, "stage1": stage1}}
    runs = [protect_in_stages(world, "trap", trap, args.out, meter), protect_in_stages(world, "mergeguard", mergeguard, args.out, meter)]
    parameters = sum(t.numel() for t in Checkpoint(world.base).state_dict().values())
    record = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "preset": args.preset, "parameters": parameters,
              "world_scores": world.scores, "stages": meter.rows, "runs": runs}  # fmt: skip
    results = args.results.with_name(f"gpu_check-{device}.md")
    results.with_suffix(".json").write_text(json.dumps(record, indent=2))
    write_results(results, report(record))


def report(record: dict) -> str:
    unit = "peak GPU memory allocated" if record["device"] != "cpu" else "peak resident memory (CPU)"
    lines = [
        f"# GPU check: `protect` end to end on a {record['parameters'] / 1e6:.2f} M-parameter synthetic world ({record['device']})",
        "",
        measured_on("gpu_check.py") + f" Preset `{record['preset']}`.",
        "",
        f"| stage | seconds | {unit} |",
        "|---|---|---|",
    ]
    lines += [f"| {row['stage']} | {row['seconds']:.1f} | {row['peak_gb']:.2f} GB |" for row in record["stages"]]
    lines += ["", "| run | standalone count (base / original / protected) | merged retention | adaptive (credited) |", "|---|---|---|---|"]
    for run in record["runs"]:
        s = run["standalone"]
        retention = "n/a" if run["merged_retention"] is None else f"{run['merged_retention']:.2f}"
        attacks = ", ".join(f"{name} {value:.2f}" for name, value in run["adaptive"].items() if value is not None) or "n/a"
        scores = " / ".join(f"{100 * s[variant]:.1f}" for variant in ("base", "original", "protected"))
        lines.append(f"| {run['method']} | {scores} | {retention} | {attacks} |")
    lines += ["", "World scores (exact match of each model on each skill): " + json.dumps(record["world_scores"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
