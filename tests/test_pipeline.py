"""The whole pipeline on the pico world, every stage and every registered defense and attack, in seconds.

The pico world's models learn little (a 2-layer, 32-wide Llama trained for a few dozen steps), so these tests check
what each stage writes and decides, not figures: the toy-world tests (``slow``) measure those. Here a model is "not
better than the base", so every run's merged-retention gate fails with that note, and the verdict is exit 1. One
merge method without a coefficient (``model_stock``) and 4 prompts per task keep each run to seconds.
"""

import json

import pytest
import torch

from hf_mergeguard.cli.main import main
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.protect.base import DEFENSES
from hf_mergeguard.protect.steps import done_marker
from hf_mergeguard.release.folder import LOG_FILE


@pytest.fixture
def quick(pico_world, protect_argv, tmp_path):
    """``quick(method, *extra)``: protect the pico world's count fine-tune; ``(exit code, selftest.json, out)``."""

    def run(method: str, *extra: str) -> tuple[int, dict, object]:
        out = tmp_path / method.replace("+", "-")
        argv = protect_argv(
            pico_world,
            out,
            "--method",
            method,
            "--limit",
            "4",
            *extra,
            methods="model_stock",
            batch_size=16,
            work=tmp_path / f"work-{out.name}",
        )
        code = main(argv)
        return code, json.loads((out / "selftest.json").read_text()), out

    return run


def test_every_defense_and_every_attack_run(quick, capsys):
    """MergeGuard with every adaptive attack; the trap and MergeGuard's stage 1; the three function-preserving defenses
    stacked: every registered defense runs, and every attack."""
    code, report, _ = quick("mergeguard", "--attack-steps", "1", "--attack-examples", "4")
    assert code == 1 and "NOT safe to release" in capsys.readouterr().out
    assert report["schema_version"] == 2 and report["method"] == "mergeguard"
    attacks = report["robustness"]["attacks"]
    assert list(attacks) == ["realign", "signrestore", "lowrank", "layerwise", "unmask", "distill", "recover", "graderase"]
    assert attacks["realign"]["details"]["symmetry_found"] is False  # MergeGuard is no symmetry
    negation = report["protection"][0]["details"]["negation"]
    assert attacks["signrestore"]["details"]["applies"] and attacks["signrestore"]["details"]["settings_from"].startswith("published")
    assert attacks["signrestore"]["details"]["flipped_entries"] == negation["negated_entries"]  # beta 2: undone
    assert report["robustness"]["attacks"]["graderase"]["details"]["setup"]["examples"] == 4
    assert report["gates"]["merged_retention"]["note"].startswith("the model is not better than the base")
    assert report["protection"][0]["details"]["negation"]["negated_share"] == pytest.approx(0.1, abs=0.01)

    code, report, out = quick(
        "trap+mergeguard",
        "--stage1",
        "--steps",
        "1",
        "--criticality",
        "exact",
        "--trap-perturbations",
        "scale",
        "--no-adaptive",
        "--seed",
        "3",
    )
    trap, mergeguard = report["protection"]
    assert len(trap["details"]["training"]["losses"]) == 1 and trap["details"]["training"]["seconds_per_step"] > 0
    assert mergeguard["details"]["criticality"]["mode"] == "exact" and len(mergeguard["details"]["stage1"]["losses"]) == 1
    config = (out / "protect_config.yml").read_text()
    assert "run:\n" in config and "seed: 3" in config and "robustness" not in report

    # The LLM memory path: both training stages as a LoRA on frozen weights, with gradient checkpointing (the same stack
    # written the other way round: its own work folder).
    code, report, _ = quick(
        "mergeguard+trap", "--stage1", "--steps", "2", "--trap-lora-rank", "2", "--stage1-lora-rank", "2", "--gradient-checkpointing",
        "--no-adaptive",
    )  # fmt: skip
    trap, mergeguard = report["protection"]
    assert trap["public_parameters"]["trap"].endswith("LoRA rank 2") and trap["details"]["config"]["gradient_checkpointing"]
    assert mergeguard["details"]["config"]["stage1"]["lora_rank"] == 2 and len(mergeguard["details"]["stage1"]["losses"]) == 2

    code, report, _ = quick("mergelock+params+mergebarrier", "--no-adaptive")
    assert [p["method"] for p in report["protection"]] == ["params", "mergebarrier", "mergelock"]
    ran = {"mergeguard", "trap", "params", "mergebarrier", "mergelock"}
    assert set(DEFENSES.names()) == ran, "a registered defense this test does not run"


def test_a_stack_is_undone_by_its_key_and_realigned_without_it(quick, pico_world, tmp_path, capsys):
    code, report, out = quick("mergelock+params", "--no-adaptive")
    key = tmp_path / f"{out.name}.key.safetensors"
    assert key.is_file() and not (out / key.name).exists()
    restored = tmp_path / "restored"
    assert main(["unprotect", str(out), "--key", str(key), "--output-dir", str(restored)]) == 0
    assert "Undid mergelock then params" in capsys.readouterr().out
    original, back = Checkpoint(pico_world.model("count")), Checkpoint(restored)
    assert max((original.get(n).double() - back.get(n).double()).abs().max().item() for n in original.tensor_names) <= 1e-5

    common = [
        "--base",
        str(pico_world.base),
        "--tasks",
        "toy_count",
        "--include-tasks",
        str(pico_world.tasks),
        "--merge-with",
        str(pico_world.model("rev")),
        "--freerider-tasks",
        "toy_rev",
        "--methods",
        "model_stock",
        "--limit",
        "4",
    ]
    # Nothing to keep on the pico world: the adaptive gate fails with a note, exit 1.
    assert main(["attack", str(out), "--kind", "realign", "--output-dir", str(tmp_path / "attack"), *common]) == 1
    report = json.loads((tmp_path / "attack" / "attack.json").read_text())
    assert report["robustness"]["attacks"]["realign"]["details"]["symmetry_found"] is True
    assert report["gates"]["adaptive_retention"]["note"].startswith("no attack had a skill gain")
    realigned = Checkpoint(tmp_path / "attack" / "realigned")
    assert realigned.tensor_names == original.tensor_names and (realigned.path / "tokenizer.json").is_file()


def test_demo_on_the_pico_world(tmp_path):
    from hf_mergeguard.demo import run_demo
    from hf_mergeguard.testing import PICO_WORLD

    outcome = run_demo(tmp_path / "demo", world=PICO_WORLD, adaptive=False, progress=False, methods=["model_stock"])
    assert (
        set(outcome.report.gates) == {"standalone_drop", "merged_retention"} and (tmp_path / "demo" / "protected" / "README.md").is_file()
    )
    assert [fr.tasks for fr in outcome.report.sources.freeriders] == [["toy_sort"], ["toy_rev"]]


@pytest.mark.slow  # three processes on two cores: about a minute
def test_three_processes_in_bf16_run_every_stage_with_one_accelerator(pico_world, protect_argv, torchrun, tmp_path):
    """``accelerate``-style launch on 3 processes with --bf16: the fine-tuning attacks train with the run's accelerator
    (a second one with another precision used to stop the run after the whole self-test), a batch that 3 does not
    divide is split unevenly, unmask's scorings are split over the processes, the verdict is printed once; and a
    rerun after a crash in the attacks reuses every attack that had finished."""
    out, work = tmp_path / "out", tmp_path / "work"
    argv = protect_argv(
        pico_world,
        out,
        "--method",
        "params",  # no training of its own: the attacks' fine-tunes are what this test is about
        "--bf16",
        "--limit",
        "4",
        "--attacks",
        "unmask,recover",
        "--attack-steps",
        "1",
        "--attack-examples",
        "4",
        methods="model_stock",
        batch_size=16,
        work=work,
    )
    completed = torchrun("-m", "hf_mergeguard.cli.main", *argv, timeout=600, processes=3)
    assert completed.returncode == 1, completed.stderr[-3000:]  # exit 1: the pico model is no better than its base
    assert completed.stdout.count("NOT safe to release") == 1
    last = completed.stdout.strip().splitlines()[-1]  # the verdict and where the card is, last
    assert last.startswith("Verdict: FAILED (merged_retention") and last.endswith(f"Model card: {out / 'README.md'}"), last
    # Off a terminal (captured, as in CI or `> log`), every stage writes whole lines: no tqdm frames (`text=True` would
    # turn their carriage returns into line ends, so look for their rate field), a `done` line per stage instead.
    assert "it/s]" not in completed.stderr and "s/it]" not in completed.stderr, completed.stderr[-2000:]
    assert "done (" in completed.stderr, completed.stderr[-2000:]
    # The plan's summary once, before the first stage's work, and in the run's log.
    stderr = completed.stderr
    assert stderr.count("Plan: ") == 1 and stderr.index("Plan: ") < stderr.index("done ("), stderr[:3000]
    assert "training steps on 3 x CPU" in stderr and "Plan: " in (out / "protect.log").read_text()
    attacks = json.loads((out / "selftest.json").read_text())["robustness"]["attacks"]
    assert list(attacks) == ["unmask", "recover"] and len(attacks["unmask"]["details"]["tried"]) == 3
    kept = sorted(p.name.split("-")[0] for p in (work / "attacks" / "each").iterdir())
    assert kept == ["recover", "unmask"]

    # As if the run had died after those two attacks: the stage is not marked finished, each attack's result is kept.
    # The same command resumes it (on 1 process here: the process count is not an option of the result).
    done_marker(work / "attacks").unlink()
    resumed = torchrun("-m", "hf_mergeguard.cli.main", *argv, "--overwrite", timeout=600, processes=1)
    assert resumed.returncode == 1, resumed.stderr[-3000:]
    assert (work / LOG_FILE).read_text().count("reusing the finished result") == 2
    assert json.loads((out / "selftest.json").read_text())["robustness"]["attacks"] == attacks


def _with_added_tokens(world, skill: str, folder, tokens: list[str]):
    """The world's ``skill`` fine-tune with ``tokens`` added to its tokenizer and its embeddings resized (what a trainer
    that adds a pad or chat token writes)."""
    from hf_mergeguard.evaluation import load_tokenizer
    from hf_mergeguard.io.hf_models import save_model

    tokenizer = load_tokenizer(world.model(skill))
    tokenizer.add_tokens(tokens)
    model = Checkpoint(world.model(skill)).load_model()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return save_model(model, folder, tokenizer=tokenizer)


def test_a_fine_tune_with_added_tokens_is_protected_on_its_own_vocabulary(pico_world, tmp_path, capsys):
    """The fine-tune added tokens: the base and the free-rider are lined up on its vocabulary (the added rows taken
    from it), the run goes through, and the release keeps the added tokens. A free-rider that added other tokens
    cannot be lined up: refused before any work, with the fix."""
    from hf_mergeguard.io.vocabulary import VocabularyAligned, align_vocabulary

    extended = _with_added_tokens(pico_world, "count", tmp_path / "count+tokens", ["<tool>", "</tool>"])
    base = Checkpoint(pico_world.base)
    aligned = align_vocabulary(base, Checkpoint(extended), role="base")
    rows = base.geometry.vocab_size
    assert isinstance(aligned, VocabularyAligned) and aligned.geometry.vocab_size == rows + 2
    embed = "model.embed_tokens.weight"
    assert torch.equal(aligned.get(embed)[:rows], base.get(embed)) and torch.equal(
        aligned.get(embed)[rows:], Checkpoint(extended).get(embed)[rows:]
    )

    from hf_mergeguard.cli.main import main as cli

    released = tmp_path / "released-tokens"
    args = [
        "protect", str(extended), "--base", str(pico_world.base), "--tasks", "toy_count", "--include-tasks", str(pico_world.tasks),
        "--merge-with", str(pico_world.model("rev")), "--freerider-tasks", "toy_rev", "--train-data",
        str(pico_world.data("count", "train")), "--methods", "model_stock", "--limit", "4", "--no-adaptive", "--method", "mergeguard",
        "--output-dir", str(released), "--work-dir", str(tmp_path / "work-tokens"),
    ]  # fmt: skip
    assert cli(args) in (0, 1), capsys.readouterr().err
    assert Checkpoint(released).geometry.vocab_size == rows + 2 and "<tool>" in (released / "tokenizer.json").read_text()

    other = _with_added_tokens(pico_world, "rev", tmp_path / "rev+other", ["<img>", "</img>"])
    args[args.index("--merge-with") + 1] = str(other)
    args[args.index("--output-dir") + 1] = str(tmp_path / "refused")
    assert cli(args) == 2
    assert "cannot be lined up" in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_the_plan_counts_what_the_run_does(pico_world, protect_argv, tmp_path, monkeypatch, capsys):
    """``--plan`` exits 0 without writing anything; its merges and scorings are the ones the run then makes (params
    with every adaptive attack: realign finds the symmetry and re-runs the protected model's matrix)."""
    import hf_mergeguard.attacks.base as attacks_base
    import hf_mergeguard.selftest.matrix as matrix
    from hf_mergeguard.evaluation.harness import Evaluator

    monkeypatch.setenv("HF_MERGEGUARD_CACHE", str(tmp_path / "cache"))  # no cached scores: every scoring happens
    extra = ["--attack-steps", "1", "--attack-examples", "4", "--methods", "model_stock,task_arithmetic"]
    argv = protect_argv(pico_world, tmp_path / "planned", "--method", "params", "--limit", "4", *extra, batch_size=16)
    capsys.readouterr()
    assert main([*argv, "--plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "planned").exists() and not (tmp_path / "cache").exists(), "--plan wrote something"
    stages = {stage["stage"]: stage for stage in plan["stages"]}
    assert list(stages) == [
        "params",
        "self-test matrix",
        "fine-tuning attacks' start",
        "realign",
        "lowrank (rank 16)",
        "the layerwise attack",
        "unmask",
        "the recover attack",
        "the graderase attack",
    ]
    assert plan["tasks"][0]["prompts"] == 4 and plan["tasks"][0]["prompts_from"] == "--limit 4"
    assert plan["totals"]["generated_tokens_upper_bound"] == plan["totals"]["scorings"] * 2 * 4 * 16  # 2 tasks, 4 prompts, 16 tokens
    assert stages["the graderase attack"]["training_steps"] == 2 and stages["self-test matrix"]["peak_memory_gb"] > 0

    counted = {"scorings": 0, "merges": 0}
    evaluate, merge = Evaluator.evaluate, matrix.merge_state_dict

    def counting_evaluate(self, *args, **kwargs):
        counted["scorings"] += 1
        return evaluate(self, *args, **kwargs)

    def counting_merge(*args, **kwargs):
        counted["merges"] += 1
        return merge(*args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate", counting_evaluate)
    monkeypatch.setattr(matrix, "merge_state_dict", counting_merge)
    monkeypatch.setattr(attacks_base, "merge_state_dict", counting_merge)
    main(argv)
    report = json.loads((tmp_path / "planned" / "selftest.json").read_text())
    assert report["robustness"]["attacks"]["realign"]["details"]["symmetry_found"] is True
    assert counted == {"scorings": plan["totals"]["scorings"], "merges": plan["totals"]["merges"]}, (counted, plan["totals"])
