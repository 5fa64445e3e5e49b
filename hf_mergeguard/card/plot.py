"""The card's bar chart (``selftest.png``): standalone scores, and the attacker's best merge per method."""

from __future__ import annotations

from pathlib import Path

from ..io.atomic import atomic_file
from ..report.schema import SelfTestReport

PLOT_FILE = "selftest.png"


def plot_scores(report: SelfTestReport, path: str | Path) -> Path:
    """A PNG bar chart: standalone scores (base, original, protected) and merged scores per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report.tasks

    def mean(scores: dict) -> float:
        return 100 * sum(scores[t] for t in tasks) / len(tasks)

    standalone = report.standalone
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 3]})
    names = [n for n in ("base", "original", "protected") if n in standalone]
    left.bar(names, [mean(standalone[n]) for n in names], color=["#999999", "#4c72b0", "#dd8452"][: len(names)])
    left.set_title("standalone")
    left.set_ylabel("score on " + ", ".join(tasks) + " (points)")
    methods = list(report.best)
    xs = range(len(methods))
    unprotected = [100 * report.best[m]["original"].defender_score if "original" in report.best[m] else 0 for m in methods]
    protected = [100 * report.best[m]["protected"].defender_score for m in methods]
    right.bar([x - 0.2 for x in xs], unprotected, width=0.4, label="unprotected merge", color="#4c72b0")
    right.bar([x + 0.2 for x in xs], protected, width=0.4, label="protected merge", color="#dd8452")
    right.axhline(mean(standalone["base"]), color="#555555", linestyle="--", linewidth=1, label="base (floor)")
    right.set_xticks(list(xs), methods, rotation=30, ha="right")
    right.set_title("attacker's best merge per method")
    right.legend(loc="upper center", ncol=3, fontsize=8, frameon=False)  # above the bars (scores <= 100)
    for axis in (left, right):
        axis.set_ylim(0, 112)
        axis.set_yticks(range(0, 101, 20))
    fig.tight_layout()
    with atomic_file(path, suffix=".tmp.png") as temp:
        fig.savefig(temp, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return Path(path)
