"""The memory each of the trap's perturbations works with beside one tensor the shape of Llama-3.2-1B's embedding
(128,256 x 2,048, float32, 0.98 GB): the largest tensor, where the per-tensor work peaks. Each kind runs in a fresh
process: the tensor's change formed by ``trained_change.perturb_delta`` (what every trap pass does per tensor) and
its backward; the peak resident memory beyond the tensor and its gradient, and the seconds, are reported.

Run by hand (about 5 minutes on 2 cores, 8 GB of RAM):

    python benchmarks/perturbation_work.py [--kinds dare,della,ties,lowrank]

``hf_mergeguard.memory`` prices this work as four float32 copies of the largest tensor (3.9 GB at 1B), plus the
``lowrank`` draw's SVD blocks.
"""

from __future__ import annotations

import json
import subprocess
import sys

from _common import measured_on, parse_args, write_results

ROWS, COLUMNS = 128_256, 2_048  # Llama-3.2-1B's embedding
DRAW = {"seed": 0, "coefficient": 1.0, "drop": 0.7, "epsilon": 0.05, "density": 0.3, "rank_share": 0.3}  # lowrank: the top share

CHILD = """
import json, sys, time
from pathlib import Path
import torch
from hf_mergeguard.trained_change import perturb_delta

def peak_gb():
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")) / 2**20

kind, rows, columns, draw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
delta = (torch.randn(rows, columns) * 1e-3).requires_grad_()
delta.grad = torch.zeros_like(delta)  # the gradient's memory is the tensor's, not the perturbation's
Path("/proc/self/clear_refs").write_text("5")
before, started = peak_gb(), time.perf_counter()
perturb_delta(delta, {**draw, "kind": kind}, 3).sum().backward()
print(json.dumps({"kind": kind, "work_gb": peak_gb() - before, "seconds": time.perf_counter() - started}))
"""


def main() -> None:
    def options(parser):
        parser.add_argument("--kinds", default="dare,della,ties,lowrank", help="comma-separated perturbation kinds")

    args = parse_args(__doc__, None, "perturbation_work.md", options)
    rows = []
    for kind in args.kinds.split(","):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, kind, str(ROWS), str(COLUMNS), json.dumps(DRAW)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = [
        "# The trap's perturbations: work beside the largest tensor of a 1B model",
        "",
        measured_on("perturbation_work.py") + f" `--kinds {args.kinds}`.",
        "",
        f"One float32 tensor of {ROWS:,} x {COLUMNS:,} (Llama-3.2-1B's embedding, 0.98 GB) and its gradient, allocated "
        "before the measurement; the peak resident memory beyond them while the kind's change is formed and "
        f"back-propagated. Draw: {json.dumps(DRAW)}. A measurement on random values of the real shape, on CPU.",
        "",
        "| kind | work beside the tensor | seconds (CPU) |",
        "|---|---|---|",
        *(f"| `{row['kind']}` | {row['work_gb']:.2f} GB | {row['seconds']:.1f} |" for row in rows),
    ]
    write_results(args.results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
