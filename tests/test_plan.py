"""``--plan`` at LLM shapes: only ``config.json`` is read (the shapes' configs are written here, no weights), the tasks'
sizes come from lm-eval's YAML and the table of known test splits, and the price follows the hardware asked for.
(tests/test_pipeline.py checks on the pico world that a plan's merges and scorings are the ones the run makes.)"""

import json

import pytest

from hf_mergeguard.cli.main import main
from hf_mergeguard.testing import LLAMA_3_1_8B, llama_config


@pytest.fixture
def shape_8b(tmp_path):
    """Folders holding only the config.json of a Llama-3.1-8B fine-tune, its base and a free-rider (bf16)."""
    folders = {}
    for name in ("model", "base", "rider"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**llama_config(LLAMA_3_1_8B), "torch_dtype": "bfloat16"}))
        folders[name] = str(folder)
    return folders


def plan_of(capsys, shape, *extra):
    argv = ["protect", shape["model"], "--base", shape["base"], "--tasks", "gsm8k", "--merge-with", shape["rider"]]
    argv += ["--freerider-tasks", "arc_easy", "--train-data", "train.jsonl", "--output-dir", "out", "--plan", "--json", *extra]
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_an_8b_trap_plan_prices_gsm8k_at_its_upper_bound(shape_8b, capsys):
    one = plan_of(capsys, shape_8b, "--method", "trap", "--trap-lora-rank", "16", "--gradient-checkpointing", "--plan-gpu-type", "h100")
    gsm8k, arc = one["tasks"]
    assert (gsm8k["prompts"], gsm8k["max_gen_toks"], gsm8k["num_fewshot"]) == (1319, 256, 5)
    assert arc["prompts"] == 2376 and arc["output_type"] == "multiple_choice"
    totals = one["totals"]
    assert totals["generated_tokens_upper_bound"] == pytest.approx(totals["scorings"] * 1319 * 256, abs=1)  # arc_easy: none
    stages = {stage["stage"]: stage for stage in one["stages"]}
    # 79.1 GB before issue 22, plus the default stand-in free-rider's vector in bf16 (--trap-rider-data auto) and the
    # lowrank draw's SVD work on the embedding (2.6 GB): 96.5, so one 80 GB GPU needs --gradient-accumulation-steps 4
    # (the README's recipe).
    assert stages["merge trap"]["training_steps"] == 400 and stages["merge trap"]["peak_memory_gb"] == pytest.approx(96.5, abs=0.1)
    assert stages["stand-in free-rider 1"]["training_steps"] == 100
    assert stages["self-test matrix"]["merges"] > 0 and stages["self-test matrix"]["peak_memory_gb"] < 80
    assert one["hardware"]["devices"] == 1 and one["model"]["parameters"] == pytest.approx(8.03e9, rel=2e-3)

    eight = plan_of(capsys, shape_8b, "--method", "trap", "--trap-lora-rank", "16", "--gradient-checkpointing", "--plan-gpus", "8")
    assert eight["hardware"]["type"] == "h100" and eight["hardware"]["devices"] == 8  # a GPU count alone: priced as H100s
    assert eight["totals"]["estimated_seconds"] == pytest.approx(one["totals"]["estimated_seconds"] / 8, rel=0.05)
    assert eight["totals"]["scorings"] == one["totals"]["scorings"]


def test_a_mergeguard_plan_and_bad_plan_options(shape_8b, capsys):
    plan = plan_of(capsys, shape_8b, "--method", "mergeguard", "--criticality", "exact", "--plan-gpu-type", "a100")
    stages = {stage["stage"]: stage for stage in plan["stages"]}
    assert "MergeGuard stage 1" not in stages  # skipped by default
    assert stages["criticality (exact)"]["defender_scorings"] == 32 * 9  # one scoring per tensor of each block
    assert plan["totals"]["defender_only_scorings"] == 32 * 9

    argv = [
        "protect",
        shape_8b["model"],
        "--base",
        shape_8b["base"],
        "--tasks",
        "gsm8k",
        "--train-data",
        "t.jsonl",
        "--output-dir",
        "o",
        "--plan",
    ]
    capsys.readouterr()
    assert main([*argv, "--plan-gpu-type", "v100"]) == 2
    err = capsys.readouterr().err
    assert "Unknown --plan-gpu-type 'v100'" in err and "h100, a100, h200, cpu" in err


def test_a_budget_cuts_the_selftest_to_fit_and_says_what_it_cut(shape_8b, capsys):
    """--budget-hours: finer grids go first, then prompts per task (down to 100), then adaptive attacks, the costliest
    first; the training of the protection is never cut; a budget nothing fits is refused before any work."""
    options = ["--method", "trap", "--trap-lora-rank", "16", "--gradient-checkpointing", "--plan-gpus", "8"]
    options += ["--thorough", "--adaptive", "--attack-lora-rank", "16"]
    full = plan_of(capsys, shape_8b, *options)
    hours = full["totals"]["estimated_seconds"] / 3600
    assert full["budget"] is None and hours > 2
    trap_hours = {s["stage"]: s for s in full["stages"]}["merge trap"]["seconds"] / 3600

    cut = plan_of(capsys, shape_8b, *options, "--budget-hours", f"{hours / 2:.2f}")
    budget = cut["budget"]
    assert cut["totals"]["estimated_seconds"] / 3600 <= hours / 2 and budget["estimated_hours"] <= hours / 2
    assert budget["dropped"][0].startswith("--thorough's finer grids, extra methods and extra points")
    assert {s["stage"]: s for s in cut["stages"]}["merge trap"]["seconds"] / 3600 == pytest.approx(trap_hours)
    assert cut["totals"]["merges"] < full["totals"]["merges"]

    # Below the default grids at 100 prompts per task: those, then the costliest attack first (realign: it races the
    # grid again; signrestore is not priced, the trap publishes no negation).
    floor = plan_of(capsys, shape_8b, *[o for o in options if o != "--thorough"], "--limit", "100")["totals"]["estimated_seconds"]
    tight = plan_of(capsys, shape_8b, *options, "--budget-hours", f"{0.95 * floor / 3600:.3f}")
    assert tight["totals"]["estimated_seconds"] <= 0.95 * floor + 2
    dropped = tight["budget"]["dropped"]
    assert dropped[1:3] == ["prompts: at most 100 per task (--limit 100, a seeded random subset)", "the realign attack"]
    assert [t["prompts"] for t in tight["tasks"]] == [100, 100] and "realign" not in {s["stage"] for s in tight["stages"]}

    argv = ["protect", shape_8b["model"], "--base", shape_8b["base"], "--tasks", "gsm8k", "--train-data", "t.jsonl"]
    capsys.readouterr()
    assert main([*argv, "--output-dir", "o", *options, "--budget-hours", f"{trap_hours / 2:.2f}"]) == 2
    err = capsys.readouterr().err
    assert "does not fit --budget-hours" in err and "--plan" in err
