"""The model card: golden file, the Hub metadata it carries, the plot, forced pushes, and `card` re-rendering.

The report is ``tests/data/selftest_count.json``, a real run's (see ``tests/data/make_selftest_fixture.py``)."""

import json
import os
import shutil
from pathlib import Path

import yaml

from hf_mergeguard.card import render_card, write_card
from hf_mergeguard.cli.main import main
from hf_mergeguard.report.schema import SelfTestReport

DATA = Path(__file__).parent / "data"
GOLDEN = Path(__file__).parent / "golden" / "modelcard_count.md"


def _report() -> SelfTestReport:
    return SelfTestReport.from_dict(json.loads((DATA / "selftest_count.json").read_text()))


def test_card_matches_the_golden_file():
    card = str(render_card(_report(), model_name="acme/count-protected", license="apache-2.0"))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(card)
    assert card == GOLDEN.read_text(), "card changed: review it, then rerun with UPDATE_GOLDEN=1"


def test_card_metadata_is_what_the_hub_reads():
    card = render_card(_report(), model_name="acme/count-protected", license="apache-2.0")
    meta = yaml.safe_load(str(card).split("---")[1])
    assert meta["base_model"] == "toy-world/base" and meta["base_model_relation"] == "finetune"
    assert meta["license"] == "apache-2.0"
    assert {"merge-protected", "mergeguard", "hf-mergeguard"} <= set(meta["tags"])
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["name"] == "toy_count" and result["metrics"][0]["value"] == 95.33

    # Read back with huggingface_hub's own metadata classes, as the Hub reads it: the standalone score and, beside it,
    # the attacker's best merge (TA at lambda 1.2 keeps 93.0 of count), both parsed as evaluation results.
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCard(str(card)).data
    assert isinstance(data, ModelCardData) and data.base_model == "toy-world/base" and data.license == "apache-2.0"
    standalone, merged = data.eval_results
    assert (standalone.dataset_name, standalone.metric_value, standalone.metric_config) == ("toy_count", 95.33, None)
    assert (merged.dataset_name, merged.metric_value, merged.metric_config) == ("toy_count", 93.0, "merged")
    assert "attacker's best merge (task_arithmetic, lambda=1.2)" in merged.metric_name
    assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()  # what it writes, it reads back unchanged
    body = str(card)
    assert "| task_arithmetic | lambda=1.2 | 91.3 | 75% | 93.0 | 80% | 80% |" in body
    assert "Free ride (the most of both skills one merge keeps): 80% (task_arithmetic, lambda=1.2)" in body
    assert "| toy_count | 66.0 | 99.7 | 95.3 | -4.3 |" in body
    assert "| 93.0 (80% kept) | 91.3 | 66.0 | **yes** |" in body  # realign, in the Robustness section
    assert "pushed with `--force`" not in body


def test_robustness_lists_the_attacks_not_run():
    report = _report()
    assert "Not run: lowrank, layerwise, distill, ftmerge (" in str(
        render_card(report, model_name="a/b")
    )  # the fixture's run predates them
    del report.robustness.attacks["unmask"]
    assert "Not run: lowrank, layerwise, unmask, distill, ftmerge (" in str(render_card(report, model_name="a/b"))
    report.robustness = None
    card = str(render_card(report, model_name="a/b"))
    assert "## Robustness\n\nNo adaptive attack ran in this self-test" in card
    assert "Not run: realign, signrestore, lowrank, layerwise, unmask, distill, recover, ftmerge, graderase (" in card


def test_card_says_what_a_budget_cut():
    report = _report()
    report.config = {**report.config, "budget_hours": 2.0, "budget_dropped": ["the realign attack"]}
    assert "- Cut to fit a budget of 2 hours (`--budget-hours`): the realign attack." in str(render_card(report, model_name="a/b"))
    assert "--budget-hours" not in str(render_card(_report(), model_name="a/b"))


def test_forced_card_warns_and_no_secret_reaches_it():
    card = str(render_card(_report(), model_name="acme/x", forced=True))
    assert "pushed with `--force` although a self-test gate failed" in card
    assert "standalone drop" in card and "merged retention" in card
    for secret_word in ("token", "hf_", "key_file", "secret"):
        assert secret_word not in card.lower().replace("tokens", "").replace("tokenizer", ""), secret_word


def test_card_command_rerenders_readme_and_plot(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(DATA / "selftest_count.json", folder / "selftest.json")
    assert main(["card", str(folder)]) == 0
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\n") and "# acme/count-protected" in readme  # the name recorded in the run
    assert "license: apache-2.0" in readme  # carried over from the source card via selftest.json
    assert (folder / "selftest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["card", str(tmp_path / "nothing-here")]) == 2
    assert "selftest.json" in capsys.readouterr().err
    assert not list(folder.glob(".*tmp*"))
    write_card(folder, model_name="other/name")
    assert "# other/name" in (folder / "README.md").read_text()


def test_a_model_that_lost_its_skill_says_so_first():
    """Far past the standalone gate, the table, the gate error and the card first say the model lost its own skill and
    point at the training data (its formatting as recorded) and options, before any merge figure."""
    from hf_mergeguard.release.push import gate_failure
    from hf_mergeguard.report.table import format_report

    report = _report()
    assert "lost" not in format_report(report).split("\n")[0]  # 4.3 points against 1.5: within the 3-point margin
    report.gates["standalone_drop"].value = 38.5
    report.gates["standalone_drop"].passed = False
    assert "No stage of this protection trained" in format_report(report).split("\n")[0]  # the fixture's MergeGuard: no stage 1
    report.protection[0].details["stage1"] = {"steps": 100}  # as if stage 1 had trained
    report.inputs.train_data = {"rows": 500, "formatting": "fixed", "description": "in the fixed formatting (question/answer)"}
    first = "The protected model lost 38.5 points of its own skill (the gate allows 1.5). The training rows were in the fixed"
    assert format_report(report).startswith(f"WARNING: {first}")
    error = gate_failure(report, ".", "hint")
    assert error.message.startswith(first) and "--train-format" in error.message.split("\n")[0]
    assert error.message.split("\n")[1].startswith("The self-test gate(s) standalone_drop")
    card = str(render_card(report, model_name="a/b"))
    assert card.index(first) < card.index("## Protection applied")


def test_a_weaker_protection_is_said_at_the_top_of_the_card():
    """What a defense records as weaker than its strong setting (MergeGuard's reversible sign flip, a trap without
    stand-in data) is a warning before the figures; a preset is named in the description."""
    from hf_mergeguard.protect.mergeguard import sign_flip_warning
    from hf_mergeguard.protect.mergeguard.config import MergeGuardConfig

    report = _report()
    assert "**Warning:**" not in str(render_card(report, model_name="a/b"))  # the golden card has none
    assert sign_flip_warning(MergeGuardConfig(beta=1.0)) == []
    report.protection[0].warnings = sign_flip_warning(MergeGuardConfig())  # the fixture's beta = 2
    card = str(render_card(report, model_name="a/b"))
    warning = card.index("> **Warning:** MergeGuard ran with beta = 2: the masked entries' signs are flipped")
    assert warning < card.index("## Protection applied") and "signrestore attack undoes" in card
    report.method = "mergeguard-paper"
    assert "MergeGuard as the paper writes it (beta = 1" in str(render_card(report, model_name="a/b"))
    assert SelfTestReport.from_dict(report.to_dict()).protection[0].warnings == report.protection[0].warnings


def test_card_lists_the_hub_datasets_the_run_read():
    """`datasets` in the card's YAML: the training data when it is a Hub dataset and the tasks' Hub datasets (lm-eval's
    dataset_path), not local files or code tasks (loaded only in their child)."""
    from types import SimpleNamespace

    from hf_mergeguard.data import hub_datasets

    report = _report()
    report.inputs.datasets = ["my-org/rows", "openai/gsm8k"]
    meta = yaml.safe_load(str(render_card(report, model_name="a/b")).split("---")[1])
    assert meta["datasets"] == ["my-org/rows", "openai/gsm8k"]
    assert "datasets" not in yaml.safe_load(str(render_card(_report(), model_name="a/b")).split("---")[1])

    paths = {"gsm8k": "openai/gsm8k", "toy_count": "json", "humaneval": None}

    class Evaluator:  # the one method hub_datasets reads, answering as lm-eval's loaded tasks would
        def task_object(self, task):
            return None if paths[task] is None else SimpleNamespace(config=SimpleNamespace(dataset_path=paths[task]))

    assert hub_datasets("my-org/rows:main", list(paths), Evaluator()) == ["my-org/rows", "openai/gsm8k"]
    assert hub_datasets(str(DATA / "selftest_count.json"), ["toy_count"], Evaluator()) == []
