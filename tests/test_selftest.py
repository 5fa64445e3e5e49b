"""The self-test matrix and ``check``: real mergekit merges scored by real lm-eval runs."""

import json
from pathlib import Path

import pytest
from test_sarif import sarif_validator

from hf_mergeguard.cli.main import main
from hf_mergeguard.selftest.config import SelfTestConfig
from hf_mergeguard.selftest.freeriders import FreeRider
from hf_mergeguard.selftest.matrix import analyse


def _fake_results(scores_by_job):
    return [{"job": job, "scores": scores, "metrics": {k: "exact_match,strict-match" for k in scores}} for job, scores in scores_by_job]


def _job(model, method=None, value=None, freerider=None):
    return {"model": model, "method": method, "value": value, "freerider": freerider}


def test_attacker_best_respects_the_freerider_and_gates():
    config = SelfTestConfig(methods=["task_arithmetic"], max_merged_retention=0.25)
    results = _fake_results(
        [
            (_job("base"), {"d": 0.2, "f": 0.4}),
            (_job("original"), {"d": 1.0, "f": 0.3}),
            (_job("protected"), {"d": 0.995, "f": 0.3}),
            (_job("freerider0"), {"d": 0.1, "f": 0.9}),
            # lambda 1.2 keeps the defender's skill but wrecks the free-rider's: not the attacker's choice
            (_job("original", "task_arithmetic", 0.8, 0), {"d": 0.8, "f": 0.85}),
            (_job("original", "task_arithmetic", 1.2, 0), {"d": 0.9, "f": 0.3}),
            (_job("protected", "task_arithmetic", 0.8, 0), {"d": 0.3, "f": 0.85}),
            (_job("protected", "task_arithmetic", 1.2, 0), {"d": 0.6, "f": 0.2}),
        ]
    )
    report = analyse(results, ["d"], config, [FreeRider(model=None, tasks=["f"], name="fr")], with_original=True)
    best = report.best["task_arithmetic"]
    assert best["original"].value == 0.8 and best["original"].defender_kept == pytest.approx(0.75)
    assert best["protected"].value == 0.8 and best["protected"].defender_kept == pytest.approx(0.125)
    assert best["protected"].best_any_value == 1.2
    # The free ride: the smaller share (0.8: defender 0.125, rider 0.9 -> 0.125; 1.2: defender 0.5, rider -0.4).
    assert best["protected"].free_ride == pytest.approx(0.125) and best["protected"].best_free_ride_value == 0.8
    assert best["protected"].defender_kept_of_protected == pytest.approx(0.1 / 0.795)  # of the release's own gain
    assert report.free_ride == {"method": "task_arithmetic", "value": 0.8, "free_ride": pytest.approx(0.125)} | {
        "defender_kept": pytest.approx(0.125),
        "freerider_kept": pytest.approx(0.9),
    }
    assert report.gates["standalone_drop"].value == pytest.approx(0.5)
    assert report.gates["merged_retention"].passed and report.passed


def test_an_asymmetric_point_can_be_the_attackers_best():
    """--thorough's extra points (here the free-rider at weight 0.5) are grid points like the others: the best one is
    reported with what it varied, in the report, the table and the card's label."""
    from hf_mergeguard.report.table import coefficient_label, format_report

    config = SelfTestConfig(methods=["task_arithmetic"], thorough=True)
    assert sum(1 for _ in config.merge_methods()[0].extras(True)) == 3
    asymmetric = {**_job("protected", "task_arithmetic", 1.0, 0), "extra": [["rider_weight", 0.5]]}
    results = _fake_results(
        [
            (_job("base"), {"d": 0.2, "f": 0.4}),
            (_job("protected"), {"d": 1.0, "f": 0.3}),
            (_job("freerider0"), {"d": 0.1, "f": 0.9}),
            (_job("protected", "task_arithmetic", 1.0, 0), {"d": 0.5, "f": 0.9}),
            (asymmetric, {"d": 0.7, "f": 0.8}),
        ]
    )
    report = analyse(results, ["d"], config, [FreeRider(model=None, tasks=["f"], name="fr")], with_original=False)
    best = report.best["task_arithmetic"]["protected"]
    assert best.extra == {"rider_weight": 0.5} and best.defender_kept == pytest.approx(0.625)
    assert coefficient_label("task_arithmetic", best.value, best.extra) == "lambda=1 w_fr=0.5"
    assert "lambda=1 w_fr=0.5" in format_report(report)


def test_check_unprotected_finetune_exits_1(toy_world, capsys, tmp_path):
    """An unprotected fine-tune is not safe to release: merges keep its skill."""
    code = main(
        [
            "check",
            str(toy_world.model("count")),
            "--base",
            str(toy_world.base),
            "--merge-with",
            str(toy_world.model("rev")),
            "--freerider-tasks",
            "toy_rev",
            "--tasks",
            "toy_count",
            "--include-tasks",
            str(toy_world.tasks),
            "--methods",
            "task_arithmetic,ties,dare_ties",
            "--limit",
            "150",
            "--output",
            str(tmp_path / "selftest.json"),
            "--format",
            "sarif",  # what a code-scanning upload reads: stdout is the SARIF log alone
        ]
    )
    assert code == 1  # a finding (0: none; 2: an error)
    sarif = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "selftest.json").read_text())
    kept = {m: b["protected"]["defender_kept"] for m, b in report["best"].items()}
    assert kept["task_arithmetic"] >= 0.7 and kept["dare_ties"] >= 0.7
    assert report["gates"]["merged_retention"]["passed"] is False
    assert not report["passed"]
    sarif_validator().validate(sarif)
    results = sarif["runs"][0]["results"]
    assert {r["ruleId"] for r in results} == {"MG001"} and len(results) == sum(k > 0.25 for k in kept.values())
    assert results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == f"{toy_world.model('count').as_posix()}/config.json"


def test_two_processes_give_the_same_scores(toy_world, tmp_path, torchrun):
    """The matrix split over 2 CPU processes (torchrun + gloo) scores exactly like 1 process; the attacks that train
    (recover's DDP fine-tuning meets on both ranks, no hang; layerwise runs its steps on each) end with the figures of
    one process."""
    from distributed_matrix import matrix

    out = tmp_path / "two.json"
    completed = torchrun(str(Path(__file__).parent / "distributed_matrix.py"), str(out))
    assert completed.returncode == 0, completed.stderr[-3000:]
    two = json.loads(out.read_text())
    one = matrix(toy_world)
    assert two["processes"] == 2
    assert two["standalone"] == one["standalone"]
    assert [(m["method"], m["value"], m["scores"]) for m in two["merges"]] == [
        (m["method"], m["value"], m["scores"]) for m in one["merges"]
    ]
    figures = {
        n: {name: (a["best"]["scores"], a["credited"]) for name, a in r["robustness"]["attacks"].items()} for n, r in ((1, one), (2, two))
    }
    assert figures[2] == figures[1] and set(figures[1]) == {"layerwise", "recover"}


def test_jobs_go_through_a_dynamic_queue(torchrun, tmp_path):
    """3 CPU processes over gloo share the jobs through a queue: the process that drew the long job takes no other
    while the others share the rest (contiguous blocks would have given it 8), and every result comes back in job
    order on every process, for a second queue too."""
    out = tmp_path / "queue.json"
    completed = torchrun(str(Path(__file__).parent / "distributed_queue.py"), str(out), processes=3)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 3
    assert [r["square"] for r in result["first"]] == [i * i for i in range(24)] and result["second"] == [0, -1, -2, -3, -4]
    slow = result["first"][0]["rank"]
    assert sum(1 for r in result["first"] if r["rank"] == slow) == 1, result["first"]


def test_score_cache_keeps_every_job_on_disk_and_forgets_rewritten_files(tmp_path, pico):
    """Each scored job is kept as it finishes (the protected model's too), keyed by the files' fingerprints: a rerun
    reuses it, a rewritten checkpoint is scored again, and a model held only in memory is never cached."""
    from hf_mergeguard.digests import source_fingerprint
    from hf_mergeguard.io.checkpoint import Checkpoint
    from hf_mergeguard.selftest.matrix import Job, ScoreCache

    base, protected, rider = (Checkpoint(pico(seed=i)) for i in range(3))
    prints = {name: source_fingerprint(c) for name, c in (("base", base), ("protected", protected), ("freerider0", rider))}
    calls = []

    def score(job):
        calls.append(job)
        return {"job": job.model, "scores": {"t": 0.5}}

    cache = ScoreCache(tmp_path / "scores", prints, {"tasks": ["t"]})
    merge = Job("protected", "task_arithmetic", 1.0, 0)
    cache.score(merge, score), cache.score(Job("protected"), score)
    cache.score(merge, score), cache.score(Job("protected"), score)
    assert len(calls) == 2 and len(list((tmp_path / "scores").iterdir())) == 2
    rewritten = source_fingerprint(Checkpoint(pico(seed=9, folder=protected.path, overwrite=True)))
    assert rewritten != prints["protected"]
    ScoreCache(tmp_path / "scores", {**prints, "protected": rewritten}, {"tasks": ["t"]}).score(merge, score)
    assert len(calls) == 3
    ScoreCache(tmp_path / "scores", {**prints, "protected": None}, {"tasks": ["t"]}).score(merge, score)
    assert len(calls) == 4 and len(list((tmp_path / "scores").iterdir())) == 3


def test_synthetic_freerider_of_a_bf16_base_trains_through_float32_master_weights(tmp_path, pico, caplog):
    """``check`` without --merge-with fine-tunes the base into a stand-in free-rider; on a bf16 base at an LLM's
    learning rate bf16 AdamW barely moved it. It now trains in float32 and is stored back in bf16."""
    import torch

    from hf_mergeguard.io.checkpoint import Checkpoint
    from hf_mergeguard.selftest.freeriders import synthetic_freerider
    from hf_mergeguard.toyworld.skills import make_tokenizer
    from hf_mergeguard.training import TrainingConfig

    base = Checkpoint(pico(dtype=torch.bfloat16))
    training = TrainingConfig(steps=10, learning_rate=2e-5, batch_size=8, max_length=64)
    with caplog.at_level("INFO", logger="hf_mergeguard"):
        rider = synthetic_freerider(base, make_tokenizer(), tmp_path / "rider", training=training, progress=False)
    # A first-time user learns what is being built, and how to use a real free-rider instead.
    assert "the free-rider is synthetic, the base fine-tuned on digit sorting (4000 rows, 10 steps at lr 2e-05)" in caplog.text
    assert "Pass --merge-with MODEL --freerider-tasks TASK" in caplog.text
    names = base.tensor_names
    moved = sum(int((rider.model.get(n) != base.get(n)).sum()) for n in names) / sum(base.get(n).numel() for n in names)
    assert all(rider.model.get(n).dtype == torch.bfloat16 for n in names)
    # The same training with bf16 AdamW (what it did before): far fewer entries move.
    from hf_mergeguard.training import Example, train_causal_lm

    model = base.load_model()
    rows = [json.loads(line) for line in (tmp_path / "rider" / "data" / "train.jsonl").read_text().splitlines()]
    train_causal_lm(model, make_tokenizer(), [Example(r["prompt"], r["completion"]) for r in rows], training, progress=False)
    before = dict(model.named_parameters())
    pure = sum(int((before[n].detach() != base.get(n)).sum()) for n in names) / sum(base.get(n).numel() for n in names)
    assert moved > 3 * pure and moved > 0.1, (moved, pure)  # measured: 21.9% of entries against 3.6%
