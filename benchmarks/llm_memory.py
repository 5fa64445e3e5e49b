"""Peak memory of the merge trap at the Llama-3.2-1B shape on CPU, against ``hf_mergeguard.memory``'s model, and the
model's figures for every stage at 1B and 8B (issue 19).

Run by hand (24 GB RAM, 8 GB of free disk; on 2 CPU cores about 10 minutes per float32 setting, and over 40 for the
bf16 one: CPU bf16 matmuls are slow; a setting the kernel's OOM killer stops is reported as such):

    python benchmarks/llm_memory.py [--out benchmarks/_work/llm_memory] [--settings 0,3] [--rows kept.json]

It writes a random bf16 checkpoint of the Llama-3.2-1B shape (``testing.LLAMA_3_2_1B``, 1.24 B parameters, tied
embeddings) and a "fine-tune" of it (base + noise), then runs each measured setting in a fresh process: load the
model as the trap does, reset the peak resident set (``/proc/self/clear_refs``), run two trap steps
(``merge_trap_finetune``, the code ``protect --method trap`` runs) on random 2-example micro-batches, and read the
peak (VmHWM). The trap keeps θ_pre in the base's stored dtype; on CPU that is the host copy of the base itself
(``ctx.base.state_dict()``, no second copy), so the modelled figure for the same setting is the model's alone.

The 8B figures are the model's alone (no 8B run fits this machine); the 1B measurements are what make it credible.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import measured_on, parse_args, peak_resident_mb, write_results

# (name, weights dtype, lora rank, gradient checkpointing, layers, examples per micro-batch, tokens per example,
#  perturbations: None for the trap's defaults)
ISSUE_19 = ["dare", "ties", "rider"]  # the perturbations that form masks and random directions (issue 19's rows)
MEASURED = [
    ("LoRA 16 + checkpointing, fp32 weights", "float32", 16, True, None, 2, 128, ISSUE_19),
    ("LoRA 16, no checkpointing, fp32 weights", "float32", 16, False, None, 2, 128, ISSUE_19),
    ("LoRA 16 + checkpointing, bf16 weights", "bfloat16", 16, True, None, 1, 64, ISSUE_19),
    ("every weight (fp32 + AdamW), 4 layers", "float32", 0, False, 4, 2, 128, ISSUE_19),
    # Issue 22: the default attack family (della, lowrank, layerwise, finetune with LoRA inner steps, ...).
    ("attack-family defaults, LoRA 16 + checkpointing, fp32 weights", "float32", 16, True, None, 2, 128, None),
]


def shape_config(layers: int | None) -> dict:
    """The Llama-3.2-1B config.json (with fewer layers when ``layers`` says so)."""
    from hf_mergeguard.testing import LLAMA_3_2_1B, llama_config

    return llama_config(LLAMA_3_2_1B, **({"num_hidden_layers": layers} if layers else {}))


def make_inputs(folder: Path, layers: int | None) -> tuple[Path, Path]:
    import torch

    from hf_mergeguard.testing import write_random_checkpoint

    suffix = f"-{layers}l" if layers else ""
    base, model = folder / f"base{suffix}", folder / f"model{suffix}"
    config = shape_config(layers)
    if not (base / "config.json").is_file():
        write_random_checkpoint(base, config, dtype=torch.bfloat16, seed=0)
    if not (model / "config.json").is_file():
        write_random_checkpoint(model, config, dtype=torch.bfloat16, seed=1, like=base, noise=0.05)
    return model, base


def child(spec: dict) -> dict:
    """One measured setting, in this (fresh) process."""
    import torch

    from hf_mergeguard.io.checkpoint import Checkpoint
    from hf_mergeguard.protect.trap import TrapConfig, merge_trap_finetune
    from hf_mergeguard.toyworld.skills import make_tokenizer
    from hf_mergeguard.training import Example

    torch.set_num_threads(2)
    model_ckpt, base_ckpt = Checkpoint(spec["model"]), Checkpoint(spec["base"])
    dtype = getattr(torch, spec["dtype"])
    tokenizer = make_tokenizer()
    # Character-level text of the asked length (the tokenizer's ids are < 64, valid in any vocabulary).
    examples = [Example("", ("abcdefghij klmnopqrstuvwxyz " * 20)[: spec["tokens"] - 1]) for _ in range(8)]
    config = TrapConfig(
        steps=2,
        batch_size=spec["batch"],
        max_length=spec["tokens"],
        lora_rank=spec["lora"],
        gradient_checkpointing=spec["checkpointing"],
        rider_data="random",  # no stand-in data here: random directions of several norms and ranks
        **({"perturbations": spec["perturbations"]} if spec.get("perturbations") else {}),
    )
    baseline = peak_resident_mb()
    model = model_ckpt.load_model(dtype=dtype)
    base_state = base_ckpt.state_dict()
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on: the training, with everything loaded
    started = time.perf_counter()
    result = merge_trap_finetune(model, tokenizer, examples, config, base_state=base_state, progress=False)
    seconds = time.perf_counter() - started
    peak = peak_resident_mb()
    return {
        **spec,
        "parameters": sum(spec_.numel() for spec_ in model.parameters()),
        "peak_gb": peak / 1024,
        "before_load_gb": baseline / 1024,
        "seconds_per_step": result.seconds_per_step,
        "seconds": seconds,
    }


def modelled(row: dict) -> tuple[float, dict]:
    """``hf_mergeguard.memory``'s figure for a measured setting (its θ_pre anchor is the host copy of the base)."""
    from hf_mergeguard.memory import GB, Shape, trap_memory
    from hf_mergeguard.protect.trap import TrapConfig
    from hf_mergeguard.protect.trap.config import LOWRANK_SHARES

    shape = Shape.of(shape_config(row.get("layers")))  # from the recorded setting alone: --rows works anywhere
    perturbations = row["perturbations"] if "perturbations" in row else ISSUE_19  # rows kept from before the column
    config = TrapConfig(lora_rank=row["lora"], **({"perturbations": perturbations} if perturbations else {}))
    model = trap_memory(
        shape,
        stored_bytes=2,
        lora_rank=row["lora"],
        samples=2,
        tokens=row["batch"] * row["tokens"],
        checkpointing=row["checkpointing"],
        weight_bytes=4 if row["dtype"] == "float32" else 2,
        inner_full="finetune" in config.perturbations and "full" in config.inner_modes(),
        lowrank_share=LOWRANK_SHARES[1] if "lowrank" in config.perturbations else 0.0,
    )
    return model.total / GB, model.gigabytes()


def main() -> None:
    def options(parser):
        parser.add_argument("--rows", type=Path, help="measurements kept from an earlier run (JSON): reported again")
        parser.add_argument("--settings", help="comma-separated indexes of MEASURED to run (default: all)")

    args = parse_args(__doc__, "llm_memory", "llm_memory.md", extra=options)
    rows = json.loads(args.rows.read_text()) if args.rows else []
    chosen = [int(i) for i in args.settings.split(",")] if args.settings else ([] if args.rows else range(len(MEASURED)))
    args.out.mkdir(parents=True, exist_ok=True)
    for index in chosen:
        name, dtype, lora, checkpointing, layers, batch, tokens, perturbations = MEASURED[index]
        model, base = make_inputs(args.out, layers)
        spec = dict(
            name=name,
            model=str(model),
            base=str(base),
            layers=layers,
            dtype=dtype,
            lora=lora,
            checkpointing=checkpointing,
            batch=batch,
            tokens=tokens,
            perturbations=perturbations,
        )
        print(f"-- {name}", flush=True)
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        if done.returncode == -9:  # the kernel's OOM killer: the setting does not fit this machine
            rows.append({**spec, "oom": True, "parameters": None})
        elif done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
        args.results.with_suffix(".json").write_text(json.dumps(rows, indent=2))  # kept as each setting finishes
    write_results(args.results, report(rows))


def modelled_table() -> list[str]:
    """Every stage at the real 1B and 8B shapes, from the model alone."""
    from hf_mergeguard.architectures import geometry_from_config
    from hf_mergeguard.memory import GB, Shape, evaluation_memory, finetune_memory, lora_finetune_memory, merge_memory, trap_memory
    from hf_mergeguard.protect.trap.config import LOWRANK_SHARES
    from hf_mergeguard.testing import LLAMA_3_1_8B, LLAMA_3_2_1B, llama_config

    lines = [
        "| stage (per process, defaults unless named) | Llama-3.2-1B | Llama-3.1-8B |",
        "|---|---|---|",
    ]
    shapes = [Shape.from_geometry(geometry_from_config(llama_config(s))) for s in (LLAMA_3_2_1B, LLAMA_3_1_8B)]
    tokens = 16 * 512  # batch 16 x max_length 512 on one process

    def row(label, make):
        lines.append(f"| {label} | " + " | ".join(f"{make(shape).total / GB:.1f} GB" for shape in shapes) + " |")

    def trap(lora, ckpt, accumulation=1, shards=1):
        # The defaults: one stand-in free-rider vector (--trap-rider-data auto), the finetune term's inner steps on
        # every weight unless the trap is a LoRA (or sharded: --fsdp runs without them).
        return lambda s: trap_memory(
            s,
            stored_bytes=2,
            lora_rank=lora,
            samples=2,
            tokens=tokens // accumulation // shards,
            checkpointing=ckpt,
            shards=shards,
            rider_vectors=1,
            inner_full=not lora and shards == 1,
            lowrank_share=LOWRANK_SHARES[1],  # the default family's lowrank draw
        )

    row("trap, every weight in fp32 (the default), batch 16 x 512", trap(0, False))
    row("trap, `--trap-lora-rank 16 --gradient-checkpointing`, batch 16 x 512", trap(16, True))
    row("trap, LoRA 16 + checkpointing, `--gradient-accumulation-steps 4`", trap(16, True, 4))
    row("trap, every weight + checkpointing, `--fsdp` over 8 GPUs (per GPU; 2 of the 16 examples each)", trap(0, True, 1, 8))
    row(
        "MergeGuard stage 1 (fp32 + AdamW), batch 16 x 512",
        lambda s: finetune_memory(s, weight_bytes=4, tokens=tokens, checkpointing=False),
    )
    row(
        "MergeGuard stage 1 + checkpointing, `--gradient-accumulation-steps 4`",
        lambda s: finetune_memory(s, weight_bytes=4, tokens=tokens // 4, checkpointing=True),
    )
    row(
        "MergeGuard stage 1, `--stage1-lora-rank 16 --gradient-checkpointing`, batch 16 x 512",
        lambda s: lora_finetune_memory(s, stored_bytes=2, lora_rank=16, tokens=tokens, checkpointing=True),
    )
    row("self-test evaluation (batch 32, 1,200-token contexts)", lambda s: evaluation_memory(s, stored_bytes=2, batch=32, context=1200))
    row("self-test merge (host RAM)", lambda s: merge_memory(s, stored_bytes=2))
    attack = 16 * 256
    row(
        "recover (float32 master weights + AdamW, batch 16 x 256)",
        lambda s: finetune_memory(s, weight_bytes=4, tokens=attack, checkpointing=False),
    )
    row(
        "graderase (as recover + the estimated direction)",
        lambda s: finetune_memory(s, weight_bytes=4, tokens=attack, checkpointing=False, extra_copies=1),
    )
    row(
        "recover with `--attack-lora-rank 16`",
        lambda s: lora_finetune_memory(s, stored_bytes=2, lora_rank=16, tokens=attack, checkpointing=False),
    )
    row(
        "graderase with `--attack-lora-rank 16` (+ the direction, in bf16)",
        lambda s: lora_finetune_memory(s, stored_bytes=2, lora_rank=16, tokens=attack, checkpointing=False, extra_copies=1),
    )
    return lines


def report(rows: list[dict]) -> str:
    lines = [
        "# LLM-scale memory: the merge trap measured at 1B on CPU, every stage modelled at 1B and 8B",
        "",
        measured_on("llm_memory.py"),
        "",
        "## Measured: two trap steps at the Llama-3.2-1B shape (random bf16 weights), CPU",
        "",
        "Peak resident memory of the process while training (model, base and everything loaded), next to "
        "`hf_mergeguard.memory`'s model of the same setting (θ_pre is the host copy of the base). Perturbations: dare, ties, "
        "rider (random directions) for issue 19's rows, the trap's defaults (every kind, the finetune term's inner steps as "
        "a LoRA) for the attack-family row; 2 samples per step. The 400-step figure is the trap's default length at "
        "that CPU speed.",
        "",
        "| setting | micro-batch | measured peak | modelled | modelled / measured | s per step (CPU) | 400 steps (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        total, _ = modelled(row)
        if row.get("oom"):
            lines.append(
                f"| {row['name']} | {row['batch']} x {row['tokens']} | killed by the OOM killer at {row.get('killed_at_gb', 0):.1f} GB "
                f"(this machine: {row.get('ram_gb', 0):.0f} GB) | {total:.1f} GB | (does not fit: modelled above the RAM) | | |"
            )
            continue
        lines.append(
            f"| {row['name']} ({row['parameters'] / 1e9:.2f} B parameters) | {row['batch']} x {row['tokens']} | {row['peak_gb']:.1f} GB | "
            f"{total:.1f} GB | {total / row['peak_gb']:.2f} | {row['seconds_per_step']:.0f} | "
            f"{400 * row['seconds_per_step'] / 3600:.1f} h |"
        )
    lines += [
        "",
        "The seconds per step are the CPU's (float32, 2 cores, 256 tokens per step), not a GPU estimate; issue 19's rows "
        "were measured while other benchmarks shared the cores, the attack-family row (2026-12-02) alone, so the two "
        "are not a clean ratio. The trap's defaults take 400 steps.",
        "",
        "## Modelled: every stage at the real shapes (`hf_mergeguard.memory`; not measured)",
        "",
    ]
    lines += modelled_table()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        main()
