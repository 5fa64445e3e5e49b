"""Training-free protection at scale: time and peak memory vs copying the checkpoint (issue 8, target 1).

Run by hand (about 30 minutes on 2 CPU cores with 70 GB of free disk; the 1B shape alone needs 10 GB, 3 min):

    python benchmarks/scale.py [--shapes 1b,7b] [--runs 3] [--out /tmp/hf-mergeguard-scale]

For each shape it writes a random bf16 base and a "fine-tune" (base + noise) in a real HF layout, sharded like
the real checkpoints (10 GB shards: Llama-2-7b-hf's two files), then times, each in a fresh process with the
input files evicted from the page cache first (``posix_fadvise(DONTNEED)``, so every run reads from disk):

* copy: the same I/O path with no work (read every tensor with the checkpoint reader, write it with the
  checkpoint writer): the reference every ratio divides by;
* threshold: MergeGuard stage 2's exact global top-10% |tau| threshold (two streaming passes over model and base);
* negation: stage 2 given its mask (threshold and excluded layers; none excluded here): one streaming pass;
* params, mergelock, mergebarrier: each function-preserving defense, key written;
* realign: the re-align attack on the PaRaMS output (Hungarian-type matching per block, then the re-aligned
  checkpoint written).

Peak memory is the process's peak resident set (VmHWM), interpreter and torch included. Ratios are per
round (op seconds / copy seconds of the same round); the table gives medians over ``--runs`` rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, measured_on, peak_resident_mb, write_results

SHAPES = ("1b", "7b")
OPS = ("copy", "negation", "params", "mergelock", "mergebarrier", "realign")
MASK_SHARE = 0.1


def _shape_config(shape: str) -> dict:
    from hf_mergeguard.testing import LLAMA_1B, LLAMA_2_7B, llama_config

    return llama_config({"1b": LLAMA_1B, "7b": LLAMA_2_7B}[shape])


def make_inputs(folder: Path, shape: str) -> tuple[Path, Path]:
    """The base and the fine-tune of ``shape`` (reused when already written)."""
    import torch

    from hf_mergeguard.testing import write_random_checkpoint

    base, model = folder / "base", folder / "model"
    config = _shape_config(shape)
    for path, kwargs in ((base, {}), (model, {"like": base, "noise": 0.05, "seed": 1})):
        if not (path / "config.json").is_file():
            started = time.perf_counter()
            write_random_checkpoint(path, config, dtype=torch.bfloat16, max_shard_size="10GB", overwrite=True, **kwargs)
            print(f"{shape}: wrote {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return model, base


def evict(*folders: Path) -> None:
    """Drop the folders' files from the page cache, so the next reader reads the disk."""
    os.sync()
    for folder in folders:
        for file in folder.glob("*.safetensors"):
            descriptor = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


# --------------------------------------------------------------------------------------------------------
# One operation, in its own process
# --------------------------------------------------------------------------------------------------------


def run_op(op: str, model_dir: Path, base_dir: Path, target: Path, threshold_file: Path) -> dict:
    from hf_mergeguard.attacks.realign import realigned_tensors
    from hf_mergeguard.io.checkpoint import Checkpoint
    from hf_mergeguard.io.writer import write_checkpoint
    from hf_mergeguard.protect.base import DEFENSES, function_preserving_methods
    from hf_mergeguard.protect.function_preserving import write_protected
    from hf_mergeguard.protect.mergeguard import negated_tensors, negation_thresholds
    from hf_mergeguard.protect.mergeguard.negation import negation_units

    model, base = Checkpoint(model_dir), Checkpoint(base_dir)
    # Stage 2 with no layer excluded: every block tensor it may touch.
    negated = [name for names in negation_units(model.geometry, model.tensor_names).values() for name in names]
    started = time.perf_counter()
    result: dict = {}
    if op == "copy":
        write_checkpoint(target, model.iter_tensors(), model.layout, companions_from=model, overwrite=True)
    elif op == "threshold":
        thresholds = negation_thresholds(model, base, negated, MASK_SHARE)
        result["threshold"] = thresholds[negated[0]]
        threshold_file.write_text(json.dumps(result))
    elif op == "negation":
        threshold = json.loads(threshold_file.read_text())["threshold"]
        counts: dict[str, int] = {}
        write_checkpoint(
            target,
            negated_tensors(model, base, {n: threshold for n in negated}, 2.0, counts),
            model.layout,
            companions_from=model,
            overwrite=True,
        )
        result["negated_share"] = sum(counts.values()) / sum(math.prod(model.spec(n).shape) for n in negated)
    elif op in function_preserving_methods():
        write_protected(model, base, op, DEFENSES.get(op).options(), target, target.parent / f"{op}.key.safetensors", companions_from=model)
    elif op == "realign":
        protected = Checkpoint(model_dir)  # the PaRaMS output
        write_checkpoint(target, realigned_tensors(protected, base), protected.layout, companions_from=protected, overwrite=True)
    else:
        raise SystemExit(f"unknown op {op!r}")
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = peak_resident_mb()
    return result


def in_child(op: str, model: Path, base: Path, target: Path, threshold_file: Path) -> dict:
    evict(model, base)
    command = [
        sys.executable,
        __file__,
        "--child",
        op,
        "--model",
        str(model),
        "--base",
        str(base),
        "--target",
        str(target),
        "--threshold-file",
        str(threshold_file),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------
# The runs and the table
# --------------------------------------------------------------------------------------------------------


def realign_distance(realigned_dir: Path, original_dir: Path) -> float:
    """Worst relative distance ||realigned - original|| / ||original|| over the block tensors (is the attack exact?)."""
    from hf_mergeguard.architectures import split_layer_name
    from hf_mergeguard.io.checkpoint import Checkpoint

    realigned, original = Checkpoint(realigned_dir), Checkpoint(original_dir)
    worst = 0.0
    for name, tensor in realigned.iter_tensors():
        if split_layer_name(name)[0] is not None:
            reference = original.get(name).float()
            worst = max(worst, float((tensor.float() - reference).norm() / reference.norm()))
    return worst


def bench_shape(shape: str, out: Path, runs: int, ops: tuple[str, ...] = OPS) -> dict:
    folder = out / shape
    model, base = make_inputs(folder, shape)
    size_gb = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 1e9
    threshold_file = folder / "threshold.json"
    measured: dict[str, list[dict]] = {op: [] for op in ("threshold", *ops)}
    distance = math.nan
    measured["threshold"].append(in_child("threshold", model, base, folder / "unused", threshold_file))
    for round_index in range(runs):
        params_out = folder / "params-out"
        for op in ops:
            source = params_out if op == "realign" else model
            target = folder / f"{op}-out"
            result = in_child(op, source, base, target, threshold_file)
            measured[op].append(result)
            print(f"{shape} round {round_index + 1}: {op} {result['seconds']:.1f} s, peak {result['peak_rss_mb']:.0f} MB", flush=True)
            if op == "realign" and round_index == 0:
                distance = realign_distance(target, model)
                print(f"{shape}: re-aligned vs original: {distance:.4f}", flush=True)
            if op != "params":
                shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(params_out, ignore_errors=True)
    copy = [r["seconds"] for r in measured["copy"]]
    return {
        "size_gb": size_gb,
        "shards": len(list(model.glob("*.safetensors"))),
        "measured": measured,
        "copy": copy,
        "realign_distance": distance,
    }


def table(results: dict[str, dict], runs: int) -> str:
    lines = ["| shape | operation | seconds (median) | × copy (median of per-round ratios) | peak RSS MB (max) |", "|---|---|---|---|---|"]
    for shape, result in results.items():
        copy = result["copy"]
        for op, rows in result["measured"].items():
            seconds = [r["seconds"] for r in rows]
            if op == "threshold":
                ratio = f"{seconds[0] / statistics.median(copy):.2f} (1 run, vs median copy)"
            else:
                ratio = f"{statistics.median(s / c for s, c in zip(seconds, copy)):.2f}"
            lines.append(
                f"| {shape} ({result['size_gb']:.1f} GB, {result['shards']} shard(s)) | {op} "
                f"| {statistics.median(seconds):.1f} | {ratio} | {max(r['peak_rss_mb'] for r in rows):.0f} |"
            )
    lines.append("")
    lines += [
        f"Re-aligned {shape} vs the original fine-tune (worst block tensor, relative): {result['realign_distance']:.4f}."
        for shape, result in results.items()
        if not math.isnan(result["realign_distance"])
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hf-mergeguard-scale"))
    parser.add_argument("--ops", default=",".join(OPS), help="the timed operations (copy first: the ratios divide by it)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    parser.add_argument("--results", type=Path, default=RESULTS / "scale.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threshold-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_op(args.child, args.model, args.base, args.target, args.threshold_file)))
        return
    results = {}
    for shape in args.shapes.split(","):
        results[shape] = bench_shape(shape, args.out, args.runs, tuple(args.ops.split(",")))
        if not args.keep:
            shutil.rmtree(args.out / shape, ignore_errors=True)
    text = (
        "# Training-free protection at scale\n\n"
        + measured_on("scale.py")
        + f" {args.runs} rounds; random bf16 Llama-shaped checkpoints (testing.LLAMA_1B, LLAMA_2_7B), every input"
        " evicted from the page cache before each run.\n\n"
        + table(results, args.runs)
        + "\n\n"
        + "Raw seconds per round:\n\n```json\n"
        + json.dumps({s: r["measured"] for s, r in results.items()}, indent=1)
        + "\n```\n"
    )
    write_results(args.results, text)


if __name__ == "__main__":
    main()
