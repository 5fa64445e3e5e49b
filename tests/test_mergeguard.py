"""MergeGuard on the toy world: stage 1 over processes, criticality, and ``protect`` end to end."""

import json
from pathlib import Path

import pytest
import torch

from hf_mergeguard.protect.mergeguard.stage1 import l2_term

TESTS = Path(__file__).parent


def test_l2_readings():
    layer = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]))
    base = {"weight": torch.ones(2, 3)}
    assert l2_term(layer, "paper").item() == pytest.approx(14.0)
    assert l2_term(layer, "paper-mean").item() == pytest.approx(14.0 / 6)
    assert l2_term(layer, "base", base).item() == pytest.approx(0 + 1 + 1 + 1 + 1 + 4)
    assert l2_term(layer, "base-mean", base).item() == pytest.approx(8.0 / 6)


def test_stage1_on_two_processes_gives_the_weights_of_one(toy_world, tmp_path, torchrun):
    """Stage 1 and the merge trap under torchrun (2 CPU processes, gloo; DDP, then sharded with FSDP2) end with the
    weights of 1-process runs."""
    from distributed_stage1 import LORA, stage1_weights, trap_weights

    out = tmp_path / "two.pt"
    completed = torchrun(str(TESTS / "distributed_stage1.py"), str(out), timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    two = torch.load(out)
    weights, result = stage1_weights(toy_world, None)
    assert two["processes"] == 2
    assert two["losses"] == pytest.approx(result.losses, rel=1e-4)
    assert two["logs"][-1]["l2"] == pytest.approx(result.logs[-1]["l2"], rel=1e-4)
    differ = max(float((weights[k] - two["weights"][k]).abs().max()) for k in weights)
    assert differ < 1e-5, f"2-process weights differ from 1-process ones by {differ}"
    from hf_mergeguard.io.checkpoint import Checkpoint

    before = Checkpoint(toy_world.model("count")).state_dict()
    moved = max(float((weights[k] - before[k].float()).abs().max()) for k in before)
    assert moved > 1e-4, "stage 1 did not train at all"

    # The trap's perturbed passes run on the unwrapped module; one backward still syncs every gradient.
    trap, trap_result = trap_weights(toy_world, None)
    assert two["trap_losses"] == pytest.approx(trap_result.losses, rel=1e-4)
    assert set(two["trap_logs"][-1]) == set(trap_result.logs[-1])
    differ = max(float((trap[k] - two["trap_weights"][k]).abs().max()) for k in trap)
    assert differ < 1e-5, f"2-process trap weights differ from 1-process ones by {differ}"
    moved = max(float((trap[k] - before[k].float()).abs().max()) for k in before)
    assert moved > 1e-4, "the trap did not train at all"

    # The LLM path (a LoRA, gradient checkpointing restoring each pass's draw) under DDP: the weights of one process.
    lora, lora_result = trap_weights(toy_world, None, **LORA)
    assert two["lora_losses"] == pytest.approx(lora_result.losses, rel=1e-4)
    differ = max(float((lora[k] - two["lora_weights"][k]).abs().max()) for k in lora)
    assert differ < 1e-5, f"2-process LoRA trap weights differ from 1-process ones by {differ}"
    moved = max(float((lora[k] - before[k].float()).abs().max()) for k in before)
    assert moved > 1e-5, "the LoRA trap did not train at all"

    # --fsdp: stage 1 with every weight sharded over the 2 processes (FSDP2), its L2 gradient added shard by shard.
    assert two["sharded_losses"] == pytest.approx(result.losses, rel=1e-4)
    assert two["sharded_logs"][-1]["l2"] == pytest.approx(result.logs[-1]["l2"], rel=1e-4)
    differ = max(float((weights[k] - two["sharded_weights"][k]).abs().max()) for k in weights)
    assert differ < 1e-5, f"sharded 2-process stage-1 weights differ from 1-process ones by {differ}"

    # --fsdp --method trap: the weights (and the LoRA factors) sharded, every pass formed from the gathered layer.
    for key, reference, losses in (("sharded_trap", trap, trap_result.losses), ("sharded_lora", lora, lora_result.losses)):
        assert two[f"{key}_losses"] == pytest.approx(losses, rel=1e-4), key
        differ = max(float((reference[k] - two[f"{key}_weights"][k]).abs().max()) for k in reference)
        assert differ < 1e-5, f"{key}: 2-process weights differ from 1-process ones by {differ}"


def test_fast_criticality_agrees_with_exact_at_a_fraction_of_the_cost(toy_world):
    """The paper's exact criticality (lm-eval per layer) vs ours (screen + calibration-loss checks)."""
    from hf_mergeguard.data import load_train_examples
    from hf_mergeguard.protect.mergeguard.config import MergeGuardConfig
    from hf_mergeguard.protect.mergeguard.criticality import agreement, fast_criticality
    from hf_mergeguard.testing import criticality_inputs

    model, units, theta, base_state, tokenizer, exact = criticality_inputs(toy_world)
    defaults = MergeGuardConfig()
    calibration = load_train_examples(str(toy_world.data("count", "train")))[: defaults.calibration_size]
    fast = fast_criticality(
        model.config,
        theta,
        base_state,
        units,
        tokenizer=tokenizer,
        calibration=calibration,
        exclude_share=defaults.exclude_share,
        check_factor=defaults.check_factor,
        max_length=64,
    )
    assert len(units) == 36 and len(exact.excluded) == len(fast.excluded) == 4
    # Measured: 3 of 4 excluded units agree (4 of 4 on the toy world an earlier machine built); 11100 vs 384 example
    # passes (28.9x), 246642 vs 8904 tokens (27.7x).
    assert agreement(exact, fast) >= 0.75, (exact.excluded, fast.excluded)
    assert exact.example_passes >= 20 * fast.example_passes
    assert exact.tokens >= 20 * fast.tokens


def _digest_folder(folder: Path) -> dict:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_protect_without_training_data_fails_before_any_work(toy_world, tmp_path, capsys, protect_argv):
    from hf_mergeguard.cli.main import main

    args = [a for a in protect_argv(toy_world, tmp_path / "out", work=tmp_path / "work") if a]
    cut = args.index("--train-data")
    del args[cut : cut + 2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--train-data" in err and "--skip-stage1" in err
    assert not (tmp_path / "out").exists()


def test_protect_end_to_end_on_the_toy_world(toy_world, tmp_path, capsys, hub, protect_argv):
    """``protect --method mergeguard`` with MergeGuard's defaults on a fine-tune trained in the toy world, self-tested
    with real merges.

    MergeGuard does not protect here (docs/results.md, "MergeGuard"); this test pins what it does: it costs the
    model some of its skill, DARE merges lose some of theirs, task-arithmetic merges keep theirs, every adaptive
    attack defeats it, and the self-test says so (exit 1, nothing hidden).
    """
    from hf_mergeguard.cli.main import main

    inputs = {name: _digest_folder(toy_world.model(name)) for name in ("count", "rev")} | {"base": _digest_folder(toy_world.base)}
    out, work = tmp_path / "protected", tmp_path / "work"
    assert main(protect_argv(toy_world, out, work=work)) == 1
    printed = capsys.readouterr().out
    assert "NOT safe to release" in printed

    # The release folder: weights + config + tokenizer, the report, the exact config, the log.
    for name in ("model.safetensors", "config.json", "tokenizer.json", "selftest.json", "protect_config.yml", "protect.log"):
        assert (out / name).is_file(), name
    report = json.loads((out / "selftest.json").read_text())
    negation = report["protection"][0]["details"]["negation"]
    assert negation["negated_share"] == pytest.approx(0.1, abs=1e-3)
    assert len(negation["excluded_units"]) == 4
    config = (out / "protect_config.yml").read_text()
    assert "beta: 2.0" in config and "skip_stage1: true" in config

    standalone = report["standalone"]
    drop = 100 * (standalone["original"]["toy_count"] - standalone["protected"]["toy_count"])
    kept = {m: (report["best"][m]["original"]["defender_kept"], report["best"][m]["protected"]["defender_kept"]) for m in report["best"]}
    # Measured (300 prompts, 1 free-rider): count 99.7 -> 95.3 (drop 4.3 points, the paper's bar is 1.5); kept
    # unprotected -> protected: task_arithmetic 0.75 -> 0.80 (no change beyond the +-0.09 a 3-point error makes of
    # a 34-point gain), ties 0.09 -> 0.15, dare_ties 0.74 -> 0.58.
    assert 1.5 < drop <= 10
    assert kept["dare_ties"][1] < kept["dare_ties"][0] - 0.1
    assert kept["task_arithmetic"][1] >= 0.6  # task arithmetic carries the edited task vector: merges keep the skill
    assert report["gates"]["merged_retention"]["passed"] is False
    robustness = report["robustness"]
    # Adaptive attacks (on by default), measured against this MergeGuard release (64 attacker examples, 30 steps):
    # signrestore 75% kept, lowrank 82%, realign 80% kept (MergeGuard is no symmetry: re-aligning changes little,
    # the merges keep what they kept), unmask 74%, recover 89% and graderase 94%, where the free-rider fine-tuned on
    # the same 64 examples alone reaches 55% and taught by this release's answers 65% (before distillation was a
    # reference, recover was credited 0.34 and graderase 0.39).
    credited = {name: attack["credited"] for name, attack in robustness["attacks"].items()}
    # signrestore (beta = 2 keeps magnitudes): the original comes back (99.7, its own score) and its merges keep 75%,
    # what the unprotected fine-tune's merges keep.
    assert robustness["attacks"]["signrestore"]["details"]["standalone"] == {"toy_count": standalone["original"]["toy_count"]}
    assert credited["signrestore"] == pytest.approx(kept["task_arithmetic"][0], abs=0.02)
    # lowrank (rank 16 per matrix): 94.7 standalone, its task-arithmetic merge keeps 82%, more than the plain one.
    assert credited["lowrank"] >= 0.7
    # distill (a reference, never counted): the free-rider's model taught by this release's answers to the 64 prompts
    # reaches 88.0 (65% kept), above the examples alone (84.7, 55%): the fine-tuning attacks are credited beyond it.
    distill = robustness["attacks"]["distill"]
    assert distill["credited"] is None and distill["best"]["defender_kept"] > distill["details"]["data_only"]["defender_kept"]
    assert credited["realign"] >= 0.6 and credited["unmask"] >= 0.5
    # Beyond the better reference (distillation): recover 0.24 (just under the gate), graderase 0.29 (a defeat).
    assert 0.15 < credited["recover"] < 0.35
    assert credited["graderase"] > 0.25
    assert 0.4 <= robustness["attacks"]["recover"]["details"]["setup"]["data_only"]["defender_kept"] <= 0.7
    assert report["gates"]["adaptive_retention"]["passed"] is False
    card = (out / "README.md").read_text()
    assert "## Robustness" in card and "| realign |" in card and "defeat this protection" in card
    assert {name: _digest_folder(toy_world.model(name)) for name in ("count", "rev")} | {"base": _digest_folder(toy_world.base)} == inputs

    # The same command again continues from the work folder: every step is reused, the figures are identical.
    assert main(protect_argv(toy_world, out, "--overwrite", work=work)) == 1
    capsys.readouterr()
    assert json.loads((out / "selftest.json").read_text())["best"] == report["best"]
    assert "reusing" in (out / "protect.log").read_text()

    # --push-to: nothing is pushed while a gate fails; --force pushes one PR whose card says so.
    from fake_hub import GOOD_TOKEN

    push = ["--push-to", "alice/count-protected", "--token", GOOD_TOKEN, "--overwrite"]
    assert main(protect_argv(toy_world, out, *push, work=work)) == 1
    assert hub.commits == [] and "Nothing was pushed" in capsys.readouterr().err
    assert main(protect_argv(toy_world, out, *push, "--force", work=work)) == 0
    printed = capsys.readouterr().out
    assert f"{hub.endpoint}/alice/count-protected/discussions/1" in printed and GOOD_TOKEN not in printed
    (commit,) = hub.commits
    assert commit["create_pr"] and "pushed with --force" in commit["summary"]
    assert "although a self-test gate failed" in commit["files"]["README.md"].decode()
    assert {"model.safetensors", "selftest.json", "selftest.png", "protect_config.yml"} <= set(commit["files"])
    assert "protect.log" not in commit["files"]
    assert not any(GOOD_TOKEN.encode() in content for content in commit["files"].values())


def test_demo_runs_the_whole_flow(toy_world, tmp_path, capsys):
    """``demo --out DIR``: the toy world's layout plus the release folder of a protected fine-tune at DIR/protected.

    (Without the adaptive attacks and with two merge methods, for CI time: the end-to-end test above runs them through
    the same protect.)"""
    from hf_mergeguard.cli.main import main
    from hf_mergeguard.demo import DEMO_METHODS

    assert len(DEMO_METHODS) == 9
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-adaptive", "--methods", "task_arithmetic,dare_ties", "--method", "mergeguard"]) == 0
    printed = capsys.readouterr().out
    for name in ("models/base", "models/count", "data/count/train.jsonl", "tasks", "world.json"):
        assert (out / name).exists(), name
    release = out / "protected"
    for name in ("model.safetensors", "README.md", "selftest.png", "selftest.json", "protect_config.yml"):
        assert (release / name).is_file(), name
    report = json.loads((release / "selftest.json").read_text())
    assert sorted(report["best"]) == ["dare_ties", "task_arithmetic"]
    assert [fr["tasks"] for fr in report["sources"]["freeriders"]] == [["toy_sort"], ["toy_rev"]]
    assert "Verdict:" in printed and str((release / "README.md").resolve()) in printed
    assert "| task_arithmetic |" in (release / "README.md").read_text()
