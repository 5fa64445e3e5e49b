"""Self-test merges: time and peak memory per merge job, per merge method (issue 8, target 3).

Run by hand (about 5 minutes on 2 CPU cores, 2 GB of disk):

    python benchmarks/merge_memory.py [--out /tmp/hf-mergeguard-merges]

A merge job is what the self-test does per grid point: merge the defender with one free-rider (and the base)
one tensor at a time from disk (``merge_state_dict``), then build the ``transformers`` model from the merged
tensors (no copy). Each job runs in a fresh process; its peak resident set (VmHWM) minus the peak of the
same process doing everything but the merge (imports, mergekit's included, and opening the checkpoints) is the job's own memory, set
against the size of the merged model. Two worlds: the toy world (count + rev, float32) and a mid-size
random-weight Llama (270M parameters, bf16; base, a defender and a free-rider = base + noise).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import measured_on, parse_args, peak_resident_mb, write_results

MID_SIZE = dict(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    max_position_embeddings=4096,
)


def worlds(out: Path) -> dict[str, tuple[Path, Path, Path]]:
    """name -> (base, defender, free-rider) folders."""
    import torch

    from hf_mergeguard.testing import FAMILY_EXTRAS, write_random_checkpoint
    from hf_mergeguard.toyworld import build_toy_world

    toy = build_toy_world()
    config = {"model_type": "llama", **MID_SIZE, **FAMILY_EXTRAS["llama"], "rms_norm_eps": 1e-5}
    mid = out / "mid"
    paths = (mid / "base", mid / "defender", mid / "freerider")
    for index, path in enumerate(paths):
        if not (path / "config.json").is_file():
            like = {} if index == 0 else {"like": paths[0], "noise": 0.05}
            write_random_checkpoint(path, config, dtype=torch.bfloat16, seed=index, overwrite=True, **like)
    return {"toy world (count + rev)": (toy.base, toy.model("count"), toy.model("rev")), "mid-size Llama, 270M, bf16": paths}


def child(method_name: str, base: str, defender: str, freerider: str) -> dict:
    import mergekit.merge_methods  # noqa: F401  (imported before the clock and in the idle run alike)

    from hf_mergeguard.attacks.merges import get_merge_method, merge_state_dict
    from hf_mergeguard.io.checkpoint import Checkpoint
    from hf_mergeguard.io.hf_models import model_from_state_dict

    sources = [Checkpoint(base), Checkpoint(defender), Checkpoint(freerider)]
    result = {"model_mb": sum(sources[1].spec(n).nbytes for n in sources[1].tensor_names) / 2**20}
    started = time.perf_counter()
    if method_name != "none":
        method = get_merge_method(method_name)
        tensors = merge_state_dict(method, method.values()[0], base=sources[0], defender=sources[1], freeriders=[sources[2]])
        model_from_state_dict(sources[1].config, tensors)
        result["merged_mb"] = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = peak_resident_mb()
    return result


def run_child(*args: str) -> dict:
    output = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:6])))
        return
    args = parse_args(__doc__, "/tmp/hf-mergeguard-merges", "merge_memory.md")
    from hf_mergeguard.attacks.merges import MERGE_METHODS

    rows = [
        "| world | method | seconds | merged model MB | job's own peak MB (peak − idle) | own peak / model |",
        "|---|---|---|---|---|---|",
    ]
    for world, paths in worlds(args.out).items():
        idle = run_child("none", *map(str, paths))
        for name in MERGE_METHODS.names():
            result = run_child(name, *map(str, paths))
            own = result["peak_rss_mb"] - idle["peak_rss_mb"]
            rows.append(
                f"| {world} | {name} | {result['seconds']:.1f} | {result['merged_mb']:.0f} | {own:.0f} | {own / result['merged_mb']:.2f} |"
            )
            print(rows[-1], flush=True)
        rows.append(f"| {world} | (idle: imports, checkpoints opened) | – | – | {idle['peak_rss_mb']:.0f} (absolute) | – |")
    text = "# Self-test merges: time and memory per merge job\n\n" + measured_on("merge_memory.py") + "\n\n" + "\n".join(rows) + "\n"
    write_results(args.results, text)


if __name__ == "__main__":
    main()
