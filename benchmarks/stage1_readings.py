"""MergeGuard stage 1: the four readings of its L2 term, alpha swept, each followed by stage 2 (beta 2).

Run by hand (about 20 minutes on 2 CPU cores; steps are cached under $HF_MERGEGUARD_CACHE/runs):

    python benchmarks/stage1_readings.py [--out DIR] [--results benchmarks/results/stage1_readings.md]

Same world, defender, free-riders and cells as ``mergeguard_settings.py`` (the share of the defender's gain the
attacker's best merge keeps); the adaptive attacks are off (``all_defenses.py`` runs them on every defense's defaults).
The size of each reading's term against the task loss is in the last column (stage 1's last step).
"""

from __future__ import annotations

from _common import measured_on, parse_args, run_settings, write_results
from mergeguard_settings import table

# (reading, alpha): the paper's alpha is 0.01; each reading's term has its own scale (sum over 0.6 M weights
# vs a mean per tensor, weights vs their distance to the base), so each gets alphas around where it starts to bite.
SWEEP = [
    ("paper", 1e-3),
    ("paper", 1e-2),
    ("paper-mean", 1e-2),
    ("paper-mean", 1.0),
    ("base", 1e-3),
    ("base", 1e-2),
    ("base-mean", 1.0),
    ("base-mean", 100.0),
]


def settings() -> dict[str, dict]:
    out = {"stage 2 alone, beta 2 (no stage 1)": {"mergeguard": {"skip_stage1": True, "beta": 2.0}}}
    for reading, alpha in SWEEP:
        out[f"stage 1 {reading}, alpha {alpha:g} + stage 2"] = {
            "mergeguard": {"skip_stage1": False, "beta": 2.0, "stage1": {"reading": reading, "alpha": alpha}}
        }
    return out


def regulariser_column(report: dict) -> str:
    stage1 = report["protection"][0]["details"].get("stage1")
    if not stage1:
        return "–"
    last = stage1["logs"][-1]
    return f"task {last['task_loss']:.4f}, l2 {last['l2']:.3g}"


def main() -> None:
    args = parse_args(__doc__, "stage1-readings", "stage1_readings.md")
    rows = [(name, report) for name, report, _ in run_settings(settings(), args.out, selftest={"adaptive": False})]
    lines = table(rows).splitlines()
    lines[0] += " last step of stage 1 |"
    lines[1] += "---|"
    lines[2] += " |"
    for offset, (_, report) in enumerate(rows):
        lines[3 + offset] += f" {regulariser_column(report)} |"
    text = (
        "# MergeGuard stage 1 readings on the toy world\n\n" + measured_on("stage1_readings.py") + "\n\n"
        "Cells: share of the defender's skill gain over the base that the attacker's best merge keeps "
        "(free-riders rev and sort, 300 prompts per task, one seed, about +-3 points). `l2` is the term before alpha.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    write_results(args.results, text)


if __name__ == "__main__":
    main()
