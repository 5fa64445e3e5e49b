"""The model card of a protected release, rendered from ``selftest.json`` (and nothing else).

``ModelCard.from_template`` (huggingface_hub) with ``model_card_templates/modelcard.md``: the YAML header holds
``base_model`` (relation ``finetune``), tags, the source card's license and a ``model-index`` with the
protected model's standalone scores; the body holds the measured tables, a bar chart (``selftest.png``), what
the self-test did not cover, and how to reproduce. Only public parameters reach the card: never a token, a key
or a secret seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import __version__
from .checkpoint import write_text_atomically
from .errors import ConfigError
from .protect.function_preserving import FUNCTION_PRESERVING
from .report import coefficient_label
from .selftest import SELFTEST_FILE
from .templates import template_path

CARD_FILE = "README.md"
PLOT_FILE = "selftest.png"

METHOD_DESCRIPTIONS = {
    "trap": (
        "Merge trap (training-time, after Trap²): the model was trained further so that its own loss stays low at "
        "its released weights but rises when its task vector is rescaled, randomly dropped (DARE), trimmed (TIES) "
        "or added to another task vector, the changes a merge makes."
    ),
    "mergeguard": (
        "MergeGuard (dual-stage weight protection): optional density-aware fine-tuning (stage 1), then the "
        "top-k largest entries of the task vector outside the most critical layers are negated "
        "(theta - beta * M * tau; beta = 1 resets them to the base, beta = 2 flips them)."
    ),
    "params": (
        "PaRaMS (function-preserving): the MLP neurons are permuted to mismatch the base's and attention dims are "
        "rescaled (RoPE- and GQA-exact), so the model computes the same function from weights that no longer line "
        "up with other fine-tunes of the base."
    ),
    "mergelock": (
        "MergeLock (function-preserving): random invertible maps on the query-key and value-output branches of "
        "every attention block (per RoPE pair and KV group), so the weights no longer line up with other "
        "fine-tunes of the base."
    ),
    "mergebarrier": (
        "MergeBarrier, orthogonal part (function-preserving): random rotations of the query-key (per RoPE pair) "
        "and value-output branches and a random permutation of the MLP neurons."
    ),
}


def _points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def limits_of(report: dict) -> list[str]:
    """What this self-test did not cover, said in the card (honest limits)."""
    config = report.get("config", {})
    methods = sorted(report.get("best", {}))
    limits = [
        f"Merges with other models than the {len(report['sources']['freeriders'])} free-rider(s) listed below; "
        "another free-rider may keep more of the skill.",
        "Merge methods other than " + ", ".join(methods) + ", and coefficients outside the swept grid"
        + ("" if config.get("thorough") else " (the default grid; `--thorough` sweeps finer)") + ".",
        "Tasks other than " + ", ".join(report["tasks"]) + ": other skills of this model were not measured.",
        "Attackers who fine-tune the protected model (even briefly) before or after merging, or who undo the "
        "protection with knowledge of the method" + ("" if report.get("robustness") else " (no adaptive attack ran in this self-test)") + ".",
        *(
            ["Re-alignment to the public base: a function-preserving transform can be undone without its key by "
             "matching the weights to the base (Hungarian matching of MLP neurons, least squares per attention "
             "head); such an attacker then merges as if the model were unprotected."]
            if set(str(report.get("method", "")).split("+")) & set(FUNCTION_PRESERVING) and not report.get("robustness") else []
        ),
        "Scores are from one seed" + (f" on {config['limit']} examples per task" if config.get("limit") else "")
        + "; differences of a few points are within noise.",
    ]
    return limits


def reproduce_command(protect_config: dict | None) -> str:
    # protect_config.yml ships next to the card, so the command is the same for every run that recorded one.
    return "hf-mergeguard protect --config protect_config.yml" if protect_config else "# configuration not recorded"


def card_variables(report: dict, *, model_name: str, protect_config: dict | None = None, forced: bool = False) -> dict:
    """Everything the template needs, from the report (and the recorded config for the reproduce section)."""
    from . import environment

    tasks = report["tasks"]
    standalone = report["standalone"]
    protections = report.get("protection") or []
    method = report.get("method") or "+".join(p["method"] for p in protections) or "none"
    # A stack's parameters, each named after its stage.
    public_parameters = {
        (f"{p['method']}: {key}" if len(protections) > 1 else key): value
        for p in protections for key, value in p.get("public_parameters", {}).items()
    }
    inputs = report.get("inputs") or {}
    versions = report.get("versions") or environment.package_versions()
    standalone_rows = []
    for task in tasks:
        original, protected = standalone.get("original", {}).get(task), standalone["protected"][task]
        change = None if original is None else 100 * (protected - original)
        standalone_rows.append({
            "task": task,
            "base": _points(standalone["base"][task]),
            "original": _points(original),
            "protected": _points(protected),
            "change": "–" if change is None else f"{change:+.1f}",
        })
    merged_rows = []
    for method_name, variants in report["best"].items():
        original, protected = variants.get("original") or {}, variants["protected"]
        merged_rows.append({
            "method": method_name,
            "coefficient": coefficient_label(method_name, protected.get("value")),
            "unprotected": _points(original.get("defender_score")),
            "unprotected_kept": _share(original.get("defender_kept")),
            "protected": _points(protected.get("defender_score")),
            "protected_kept": _share(protected.get("defender_kept")),
        })
    gates = []
    for name, gate in report["gates"].items():
        is_points = gate.get("unit") == "points"
        gates.append({
            "name": name.replace("_", " "),
            "value": f"{gate['value']:.1f} points" if is_points else _share(gate["value"]),
            "threshold": f"{gate['threshold']:g} points" if is_points else _share(gate["threshold"]),
            "verdict": "passed" if gate["passed"] else "FAILED",
        })
    failed = [g["name"] for g in gates if g["verdict"] == "FAILED"]
    config = report.get("config", {})
    metrics = report.get("metrics", {})
    return {
        "model_name": model_name,
        "base_model": inputs.get("base") or report["sources"]["base"],
        "base_model_url": _hub_url(inputs.get("base") or report["sources"]["base"]),
        "tool_version": report.get("tool_version", __version__),
        "forced": forced,
        "failed_gates": ", ".join(failed) or "none",
        "method": method,
        "public_parameters": public_parameters,
        "method_description": " ".join(METHOD_DESCRIPTIONS.get(p["method"], "") for p in protections).strip(),
        "metric_note": "; ".join(f"{t}: {metrics.get(t, 'score')}" for t in tasks),
        "standalone_rows": standalone_rows,
        "freerider_floor": _share(config.get("freerider_floor", 0.5)),
        "merged_rows": merged_rows,
        "plot_file": PLOT_FILE,
        "gates": gates,
        "robustness_rows": [{**row, "defeats": "**yes**" if row["defeats"] else "no"} for row in report["robustness"]["rows"]]
        if report.get("robustness") else None,
        "robustness_sentence": report.get("robustness", {}).get("sentence", "") if report.get("robustness") else "",
        "limits": limits_of(report),
        "source_model": inputs.get("model") or report["sources"].get("original"),
        "source_revision": inputs.get("model_revision"),
        "base_revision": inputs.get("base_revision"),
        "freeriders": ", ".join(f"`{fr['model']}` ({', '.join(fr['tasks'])})" for fr in report["sources"]["freeriders"]),
        "tasks": ", ".join(tasks),
        "lm_eval_version": versions.get("lm_eval", "?"),
        "mergekit_version": versions.get("mergekit", "?"),
        "seed": config.get("seed", 0),
        "limit": config.get("limit"),
        "reproduce_command": reproduce_command(protect_config),
    }


def _hub_url(source: str) -> str:
    from .hub import looks_like_repo_id

    return f"https://huggingface.co/{source}" if looks_like_repo_id(source) and not Path(source).exists() else source


def card_data(report: dict, *, model_name: str, license: str | None = None):
    from huggingface_hub import EvalResult, ModelCardData

    inputs = report.get("inputs") or {}
    method = report.get("method") or "none"
    base = inputs.get("base") or report["sources"]["base"]
    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=task,
            dataset_name=task,
            metric_type=report.get("metrics", {}).get(task, "score").split(",")[0],
            metric_name=report.get("metrics", {}).get(task, "score"),
            metric_value=round(100 * report["standalone"]["protected"][task], 2),
        )
        for task in report["tasks"]
    ]
    tags = ["mergeguard", "hf-mergeguard"] + [m for m in method.split("+") if m]
    from .hub import looks_like_repo_id

    return ModelCardData(
        model_name=model_name,
        # The Hub accepts repo ids only: a base given as a local folder is named in the body instead.
        base_model=base if looks_like_repo_id(base) and not Path(base).exists() else None,
        base_model_relation="finetune",
        license=license,
        tags=tags,
        eval_results=results,
        library_name="transformers",
        pipeline_tag="text-generation",
    )


def render_card(report: dict, *, model_name: str, license: str | None = None, protect_config: dict | None = None, forced: bool = False):
    """The :class:`huggingface_hub.ModelCard` of a release (not written anywhere)."""
    from huggingface_hub import ModelCard

    data = card_data(report, model_name=model_name, license=license)
    variables = card_variables(report, model_name=model_name, protect_config=protect_config, forced=forced)
    return ModelCard.from_template(data, template_path=str(template_path()), **variables)


def plot_scores(report: dict, path: str | Path) -> Path:
    """A PNG bar chart: standalone scores (base, original, protected) and merged scores per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report["tasks"]

    def mean(scores: dict) -> float:
        return 100 * sum(scores[t] for t in tasks) / len(tasks)

    standalone = report["standalone"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 3]})
    names = [n for n in ("base", "original", "protected") if n in standalone]
    left.bar(names, [mean(standalone[n]) for n in names], color=["#999999", "#4c72b0", "#dd8452"][: len(names)])
    left.set_title("standalone")
    left.set_ylabel("score on " + ", ".join(tasks) + " (points)")
    methods = list(report["best"])
    xs = range(len(methods))
    unprotected = [100 * ((report["best"][m].get("original") or {}).get("defender_score") or 0) for m in methods]
    protected = [100 * report["best"][m]["protected"]["defender_score"] for m in methods]
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
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(temp, dpi=110, metadata={"Software": None})
    plt.close(fig)
    temp.replace(path)
    return path


def write_card(folder: str | Path, *, model_name: str | None = None, license: str | None = None, forced: bool | None = None) -> Path:
    """(Re-)render ``README.md`` and ``selftest.png`` in a finished run's folder from its ``selftest.json``."""
    import yaml

    folder = Path(folder)
    report_file = folder / SELFTEST_FILE
    if not report_file.is_file():
        raise ConfigError(f"{folder} has no {SELFTEST_FILE}.", "Point at the --output-dir of a finished protect run.")
    report = json.loads(report_file.read_text())
    config_file = folder / "protect_config.yml"
    protect_config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    release = report.get("release") or {}
    license = license or (report.get("inputs") or {}).get("license")
    forced = release.get("forced", False) if forced is None else forced
    card = render_card(report, model_name=model_name or release.get("name") or folder.name, license=license,
                       protect_config=protect_config, forced=forced)
    plot_scores(report, folder / PLOT_FILE)
    return write_text_atomically(folder / CARD_FILE, str(card) + ("" if str(card).endswith("\n") else "\n"))


def source_license(folder: str | Path) -> str | None:
    """The license in the front matter of a model folder's README.md, if any."""
    readme = Path(folder) / CARD_FILE
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme).data.to_dict().get("license")
    except Exception:  # noqa: BLE001 - a malformed source card only loses the license line
        return None
