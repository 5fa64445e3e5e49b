"""Merge-trap settings on the toy world: the trap's weight, ceiling, schedule and stand-in free-rider.

Run by hand (about 10 minutes, one CPU thread; steps are cached under $HF_MERGEGUARD_CACHE/runs):

    python benchmarks/trap_settings.py [--out DIR] [--results benchmarks/results/trap_settings.md]

Defender: the toy world's ``count`` fine-tune; free-rider: ``rev``; TA, TIES, DARE-TIES and DARE-linear; no
adaptive attacks (``all_defenses.py`` runs them on the default). The stand-in free-rider is the base fine-tuned on
the world's ``copy`` rows unless the row says otherwise.
"""

from __future__ import annotations

from _common import measured_on, parse_args, run_settings, write_results
from all_defenses import PROMPTS, merges_table

METHODS = ["task_arithmetic", "ties", "dare_ties", "dare_linear"]
SETTINGS = {
    "weight 0.3, ceiling 1.0, 200 steps, constant lr": {"weight": 0.3, "ceiling": 1.0, "steps": 200, "schedule": "constant"},
    "weight 0.5, ceiling 1.5, 200 steps, constant lr": {"weight": 0.5, "ceiling": 1.5, "steps": 200, "schedule": "constant"},
    "weight 1.0, ceiling 1.5, 200 steps, constant lr": {"weight": 1.0, "ceiling": 1.5, "steps": 200, "schedule": "constant"},
    "weight 1.0, ceiling 1.5, 400 steps, cosine (default)": {},
    "default, random stand-in (no rider data)": {"rider_data": None},
    "default, scale perturbations only (Trap² as written)": {"perturbations": ["scale"]},
}


def main() -> None:
    args = parse_args(__doc__, "trap-settings", "trap_settings.md")
    from hf_mergeguard.toyworld import build_toy_world

    stand_in = str(build_toy_world().stand_in_data())
    settings = {name: {"method": "trap", "trap": {"rider_data": stand_in, **trap}} for name, trap in SETTINGS.items()}
    rows = run_settings(settings, args.out, riders=("rev",), selftest={"methods": METHODS, "adaptive": False})
    per_step = ("s / step", lambda report: f"{report['protection'][0]['details']['training']['seconds_per_step']:.2f}")
    text = (
        "# Merge-trap settings on the toy world\n\n" + measured_on("trap_settings.py") + "\n\n"
        f"Cells: the attacker's best count score at any coefficient ({PROMPTS} prompts, ± binomial standard error), rev's "
        "score of that merge in brackets; free-rider rev; one seed; `s / step` is the trap's training time per step "
        "(one CPU thread per process when run as documented).\n\n"
        + merges_table(rows, METHODS, first_column="setting", extra=per_step)
        + "\n"
    )
    write_results(args.results, text)


if __name__ == "__main__":
    main()
