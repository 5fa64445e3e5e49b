"""The model card of a protected release, rendered from ``selftest.json`` (and nothing else).

``ModelCard.from_template`` (huggingface_hub) with ``model_card_templates/modelcard.md``: the YAML header holds
``base_model`` (relation ``finetune``), tags, the source card's license and a ``model-index`` with the
protected model's standalone scores; the body holds the measured tables, a bar chart (``selftest.png``), what
the self-test did not cover, and how to reproduce. Only public parameters reach the card: never a token, a key
or a secret seed.
"""

from __future__ import annotations

from pathlib import Path

from ..attacks.base import ATTACKS, parse_attacks
from ..environment import package_versions
from ..errors import ConfigError
from ..io.atomic import write_text_atomically
from ..io.hub import looks_like_repo_id
from ..protect.base import DEFENSES, function_preserving_methods
from ..protect.stack import preset_text
from ..report.schema import SELFTEST_FILE, SelfTestReport, load_report
from ..report.table import attack_score, coefficient_label, free_ride_sentence, robustness_sentence, skill_loss_warning
from .plot import PLOT_FILE, plot_scores
from .templates import template_path

CARD_FILE = "README.md"


def _points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def limits_of(report: SelfTestReport) -> list[str]:
    """What this self-test did not cover, said in the card (honest limits)."""
    config = report.config
    methods = sorted(report.best)
    limits = [
        f"Merges with other models than the {len(report.sources.freeriders)} free-rider(s) listed below; "
        "another free-rider may keep more of the skill.",
        "Merge methods other than "
        + ", ".join(methods)
        + ", and coefficients outside the swept grid"
        + ("" if config.get("thorough") else " (the default grid; `--thorough` sweeps finer)")
        + ".",
        "Tasks other than " + ", ".join(report.tasks) + ": other skills of this model were not measured.",
        "Attackers who fine-tune the protected model (even briefly) before or after merging, or who undo the "
        "protection with knowledge of the method" + ("" if report.robustness else " (no adaptive attack ran in this self-test)") + ".",
        *(
            [
                "Re-alignment to the public base: a function-preserving transform can be undone without its key by "
                "matching the weights to the base (Hungarian matching of MLP neurons, least squares per attention "
                "head); such an attacker then merges as if the model were unprotected."
            ]
            if set(str(report.method or "").split("+")) & set(function_preserving_methods()) and not report.robustness
            else []
        ),
        "Scores are from one seed"
        + (f" on {config['limit']} examples per task" if config.get("limit") else "")
        + "; differences of a few points are within noise.",
    ]
    if config.get("budget_dropped"):
        limits.append(
            f"Cut to fit a budget of {config['budget_hours']:g} hours (`--budget-hours`): " + "; ".join(config["budget_dropped"]) + "."
        )
    return limits


def reproduce_command(protect_config: dict | None) -> str:
    # protect_config.yml ships next to the card, so the command is the same for every run that recorded one.
    return "hf-mergeguard protect --config protect_config.yml" if protect_config else "# configuration not recorded"


def _standalone_rows(report: SelfTestReport) -> list[dict]:
    standalone = report.standalone
    rows = []
    for task in report.tasks:
        original, protected = standalone.get("original", {}).get(task), standalone["protected"][task]
        change = None if original is None else 100 * (protected - original)
        rows.append(
            {
                "task": task,
                "base": _points(standalone["base"][task]),
                "original": _points(original),
                "protected": _points(protected),
                "change": "–" if change is None else f"{change:+.1f}",
            }
        )
    return rows


def _merged_rows(report: SelfTestReport) -> list[dict]:
    rows = []
    for method, variants in report.best.items():
        original, protected = variants.get("original"), variants["protected"]
        rows.append(
            {
                "method": method,
                "coefficient": coefficient_label(method, protected.value, protected.extra),
                "unprotected": _points(original.defender_score if original else None),
                "unprotected_kept": _share(original.defender_kept if original else None),
                "protected": _points(protected.defender_score),
                "protected_kept": _share(protected.defender_kept),
                "free_ride": _share(protected.free_ride),
            }
        )
    return rows


def _gate_rows(report: SelfTestReport) -> list[dict]:
    rows = []
    for name, gate in report.gates.items():
        is_points = gate.unit == "points"
        rows.append(
            {
                "name": name.replace("_", " "),
                "value": f"{gate.value:.1f} points" if is_points else _share(gate.value),
                "threshold": f"{gate.threshold:g} points" if is_points else _share(gate.threshold),
                "verdict": "passed" if gate.passed else "FAILED",
            }
        )
    return rows


def _robustness_rows(report: SelfTestReport) -> list[dict] | None:
    robustness = report.robustness
    if robustness is None:
        return None
    return [
        {
            "attack": name,
            "description": ATTACKS.get(name).describe(result),
            "score": attack_score(result),
            "unprotected": _points(robustness.unprotected),
            "floor": _points(robustness.floor),
            "defeats": "**yes**" if result.defeats else ("not counted (a reference)" if result.details.get("reference") else "no"),
        }
        for name, result in robustness.attacks.items()
    ]


def attacks_not_run(report: SelfTestReport) -> list[str]:
    """The registered adaptive attacks this self-test did not run (the card names them)."""
    ran = set(report.robustness.attacks) if report.robustness else set()
    return [name for name in parse_attacks(["all"]) if name not in ran]


def card_variables(report: SelfTestReport, *, model_name: str, protect_config: dict | None = None, forced: bool = False) -> dict:
    """Everything the template needs, from the report (and the recorded config for the reproduce section)."""
    protections = report.protection or []
    method = report.method or "+".join(p.method for p in protections) or "none"
    # A stack's parameters, each named after its stage.
    public_parameters = {
        (f"{p.method}: {key}" if len(protections) > 1 else key): value for p in protections for key, value in p.public_parameters.items()
    }
    base = report.inputs.base if report.inputs else report.sources.base
    versions = report.versions or package_versions()
    gates = _gate_rows(report)
    return {
        "model_name": model_name,
        "base_model": base,
        "base_model_url": _hub_url(base),
        "tool_version": report.tool_version,
        "forced": forced,
        "failed_gates": ", ".join(g["name"] for g in gates if g["verdict"] == "FAILED") or "none",
        "skill_loss_warning": skill_loss_warning(report),
        "protection_warnings": [warning for p in protections for warning in p.warnings],
        "method": method,
        "public_parameters": public_parameters,
        "method_description": " ".join(
            [preset_text(method)] + [DEFENSES.get(p.method).card_text for p in protections if p.method in DEFENSES]
        ).strip(),
        "metric_note": "; ".join(f"{t}: {report.metrics.get(t, 'score')}" for t in report.tasks),
        "standalone_rows": _standalone_rows(report),
        "freerider_floor": _share(report.config.get("freerider_floor", 0.5)),
        "merged_rows": _merged_rows(report),
        "free_ride_sentence": free_ride_sentence(report.free_ride) if report.free_ride else "",
        "plot_file": PLOT_FILE,
        "gates": gates,
        "robustness_rows": _robustness_rows(report),
        "robustness_sentence": robustness_sentence(report.robustness) if report.robustness else "",
        "attacks_not_run": attacks_not_run(report),
        "limits": limits_of(report),
        "source_model": report.inputs.model if report.inputs else report.sources.original,
        "source_revision": report.inputs.model_revision if report.inputs else None,
        "base_revision": report.inputs.base_revision if report.inputs else None,
        "freeriders": ", ".join(f"`{fr.model}` ({', '.join(fr.tasks)})" for fr in report.sources.freeriders),
        "tasks": ", ".join(report.tasks),
        "lm_eval_version": versions.get("lm_eval", "?"),
        "mergekit_version": versions.get("mergekit", "?"),
        "seed": report.config.get("seed", 0),
        "limit": report.config.get("limit"),
        "reproduce_command": reproduce_command(protect_config),
    }


def _is_hub_repo(source: str) -> bool:
    return looks_like_repo_id(source) and not Path(source).exists()


def _hub_url(source: str) -> str:
    return f"https://huggingface.co/{source}" if _is_hub_repo(source) else source


def _eval_result(task: str, metric: str, value: float, name: str, config: str | None = None):
    """One ``model-index`` entry: ``value`` (a share) of lm-eval's ``metric`` on ``task``, in points."""
    from huggingface_hub import EvalResult

    return EvalResult(
        task_type="text-generation",
        dataset_type=task,
        dataset_name=task,
        metric_type=metric.split(",")[0],
        metric_name=name,
        metric_config=config,
        metric_value=round(100 * value, 2),
    )


def card_data(report: SelfTestReport, *, model_name: str, license: str | None = None):
    """The card's YAML header: what the Hub reads (base model, license, tags, evaluation results)."""
    from huggingface_hub import ModelCardData

    method = report.method or "none"
    base = report.inputs.base if report.inputs else report.sources.base
    results = []
    for task in report.tasks:
        metric = report.metrics.get(task, "score")
        results.append(_eval_result(task, metric, report.standalone["protected"][task], metric))
        # The merged result beside it: the attacker's best merge (the highest score on this task among the methods'
        # attacker's-best merges), so that the Hub's evaluation widget shows what a merge keeps.
        merges = [(method_name, b["protected"]) for method_name, b in report.best.items() if task in b["protected"].scores]
        if merges:
            name, best = max(merges, key=lambda item: item[1].scores[task])
            label = coefficient_label(name, best.value, best.extra)
            merged_name = f"{metric} of the attacker's best merge ({name}, {label})"
            results.append(_eval_result(task, metric, best.scores[task], merged_name, "merged"))
    tags = ["merge-protected", "mergeguard", "hf-mergeguard"] + [m for m in method.split("+") if m]
    return ModelCardData(
        model_name=model_name,
        # The Hub accepts repo ids only: a base given as a local folder is named in the body instead.
        base_model=base if _is_hub_repo(base) else None,
        base_model_relation="finetune",
        license=license,
        tags=tags,
        datasets=(report.inputs.datasets if report.inputs else None) or None,
        eval_results=results,
        library_name="transformers",
        pipeline_tag="text-generation",
    )


def render_card(
    report: SelfTestReport, *, model_name: str, license: str | None = None, protect_config: dict | None = None, forced: bool = False
):
    """The :class:`huggingface_hub.ModelCard` of a release (not written anywhere)."""
    from huggingface_hub import ModelCard

    data = card_data(report, model_name=model_name, license=license)
    variables = card_variables(report, model_name=model_name, protect_config=protect_config, forced=forced)
    return ModelCard.from_template(data, template_path=str(template_path()), **variables)


def write_card(folder: str | Path, *, model_name: str | None = None, license: str | None = None, forced: bool | None = None) -> Path:
    """(Re-)render ``README.md`` and ``selftest.png`` in a finished run's folder from its ``selftest.json``."""
    import yaml

    folder = Path(folder)
    report_file = folder / SELFTEST_FILE
    if not report_file.is_file():
        raise ConfigError(f"{folder} has no {SELFTEST_FILE}.", "Point at the --output-dir of a finished protect run.")
    report = load_report(report_file)
    config_file = folder / "protect_config.yml"
    protect_config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    release = report.release
    license = license or (report.inputs.license if report.inputs else None)
    forced = (release.forced if release else False) if forced is None else forced
    card = render_card(
        report,
        model_name=model_name or (release.name if release else None) or folder.name,
        license=license,
        protect_config=protect_config,
        forced=forced,
    )
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
