"""lm-eval scoring: real runs on toy-world models, task lookup, code-execution refusal."""

from pathlib import Path

import pytest

from hf_mergeguard.errors import OfflineError
from hf_mergeguard.evaluation import Evaluator, TaskCatalog, load_tokenizer
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.toyworld import exact_match, make_tokenizer


def test_lm_eval_scores_finetune_far_above_base(toy_world):
    evaluator = Evaluator(["toy_count", "toy_rev"], include_tasks=[toy_world.tasks], batch_size=64)
    tokenizer = load_tokenizer(toy_world.model("count"))
    tuned = evaluator.evaluate(Checkpoint(toy_world.model("count")).load_model(), tokenizer)
    base = evaluator.evaluate(Checkpoint(toy_world.base).load_model(), tokenizer)
    assert tuned["toy_count"].metric == "exact_match,strict-match"
    assert tuned["toy_count"].samples == toy_world.config.test_size
    assert tuned["toy_count"].value >= base["toy_count"].value + 0.2
    # lm-eval and the toy world's own greedy scorer agree exactly.
    ours = exact_match(Checkpoint(toy_world.model("count")).load_model(), make_tokenizer(), toy_world.rows("count"))
    assert tuned["toy_count"].value == pytest.approx(ours, abs=1e-9)
    # The evaluator is reusable: the same model scores the same the second time.
    again = evaluator.evaluate(Checkpoint(toy_world.model("count")).load_model(), tokenizer)
    assert again["toy_count"].value == tuned["toy_count"].value


def test_limit_scores_a_seeded_random_subset(toy_world):
    """--limit N scores N documents drawn at random with a fixed seed (the same for every model and run), not the first
    N: lm-eval scores exactly the documents the evaluator lists, and the score is the model's on those."""
    from hf_mergeguard.evaluation.sampling import subsample
    from hf_mergeguard.toyworld.scoring import exact_match

    evaluator = Evaluator("toy_rev", include_tasks=[toy_world.tasks], limit=20)
    model = Checkpoint(toy_world.model("rev")).load_model()
    scores = evaluator.evaluate(model, load_tokenizer(toy_world.base))
    assert scores["toy_rev"].samples == 20
    rows = toy_world.rows("rev")
    chosen = subsample("toy_rev", len(rows), 20)
    assert chosen == subsample("toy_rev", len(rows), 20) and chosen != list(range(20)) and len(set(chosen)) == 20
    assert [d["prompt"] for d in evaluator.documents()] == [rows[i]["prompt"] for i in chosen]
    assert scores["toy_rev"].value == pytest.approx(exact_match(model, load_tokenizer(toy_world.base), [rows[i] for i in chosen]), abs=1e-9)
    assert subsample("toy_rev", 20, 20) is None and subsample("toy_rev", 300, None) is None


def test_known_tasks_use_the_cheap_index():
    catalog = TaskCatalog(["gsm8k", "humaneval"], [])
    assert "hellaswag" not in catalog.manager.all_tasks
    assert catalog.code_tasks() == ["humaneval"]


def test_gsm8k_offline_without_cache_is_a_clear_error(toy_world, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    evaluator = Evaluator("gsm8k", limit=2)
    with pytest.raises(OfflineError) as info:
        evaluator.evaluate(Checkpoint(toy_world.base).load_model(), load_tokenizer(toy_world.base))
    assert "--task-data TASK=PATH" in info.value.hint  # the local rows, in the dataset's own format


def test_few_shot_examples_are_seeded_like_simple_evaluate(pico_world, tmp_path):
    """lm-eval's ``evaluate`` (what scores an in-memory model) does not seed the few-shot sampler, so two evaluations
    drew different demonstrations; every evaluation now reseeds it as ``simple_evaluate`` does (seed 1234)."""
    from hf_mergeguard.evaluation.harness import FEWSHOT_SEED, seed_like_simple_evaluate
    from hf_mergeguard.toyworld.tasks import task_yaml

    folder = tmp_path / "tasks"
    folder.mkdir()
    text = task_yaml("fewshot_count", pico_world.data("count", "train").resolve(), pico_world.data("count", "test").resolve())
    (folder / "fewshot_count.yaml").write_text(text.replace("num_fewshot: 0", "num_fewshot: 3"))
    evaluator = Evaluator("fewshot_count", include_tasks=[folder])
    tasks = evaluator._load_tasks()["tasks"]
    task = tasks["fewshot_count"]
    docs = list(task.eval_docs)[:6]

    def contexts():
        return [task.fewshot_context(doc, 3) for doc in docs]

    seed_like_simple_evaluate(tasks.values())
    first = contexts()
    unseeded = contexts()  # the sampler goes on drawing: what a second evaluation saw before
    seed_like_simple_evaluate(tasks.values())
    assert contexts() == first and unseeded != first and FEWSHOT_SEED == 1234


def test_a_degenerate_model_is_scored_on_its_first_prompts_only(pico_world):
    """A model whose first prompts' outputs are all empty or one unit repeated stops there (its score says so); any
    other model's score is the same as without the probe (the probe's prompts and the rest, combined)."""
    import torch

    from hf_mergeguard.evaluation.sampling import is_degenerate

    assert is_degenerate({"resps": [["   "]]}) and is_degenerate({"resps": [["abababababababababab"]]})
    assert is_degenerate({"resps": [["abcabcabcabcabcabcabcabcab"]]}) and not is_degenerate({"resps": [["############ 1"]]})
    assert not is_degenerate({"resps": [["#### 12"]]}) and not is_degenerate({"resps": [["the the cat sat"]]})
    tokenizer = load_tokenizer(pico_world.base)
    probed = Evaluator("toy_count", include_tasks=[pico_world.tasks], degenerate_probe=4)
    plain = Evaluator("toy_count", include_tasks=[pico_world.tasks], degenerate_probe=0)

    broken = Checkpoint(pico_world.model("count")).load_model()
    with torch.no_grad():
        for param in broken.parameters():
            param.zero_()  # every logit 0: the same token at every step
    score = probed.evaluate(broken, tokenizer)["toy_count"]
    assert score.degenerate and score.samples == 4 and score.value == 0.0

    model = Checkpoint(pico_world.model("count")).load_model()
    with_probe, without = probed.evaluate(model, tokenizer)["toy_count"], plain.evaluate(model, tokenizer)["toy_count"]
    assert not with_probe.degenerate and with_probe.samples == without.samples == len(pico_world.rows("count"))
    assert with_probe.value == pytest.approx(without.value, abs=1e-12)


def test_the_vllm_backend_is_wired_to_lm_eval_and_refused_when_missing(pico_world, monkeypatch, capsys):
    """--eval-backend vllm: without the vllm package a clear error before any work; with it (faked here at the one
    boundary, lm-eval's VLLM class: vllm needs a GPU) the model is written to a folder, lm-eval's vLLM model is built
    from it with the run's batch size and seed, and the scores are lm-eval's."""
    from lm_eval.models.huggingface import HFLM

    import hf_mergeguard.evaluation.backends as backends
    from hf_mergeguard.cli.main import main
    from hf_mergeguard.errors import ConfigError

    with pytest.raises(ConfigError, match="needs the vllm package") as error:
        Evaluator("toy_count", include_tasks=[pico_world.tasks], eval_backend="vllm")
    assert "pip install vllm" in error.value.hint
    capsys.readouterr()
    assert (
        main(["evaluate", str(pico_world.base), "--tasks", "toy_count", "--include-tasks", str(pico_world.tasks), "--eval-backend", "vllm"])
        == 2
    )
    assert "Error: --eval-backend vllm needs the vllm package" in capsys.readouterr().err
    built = []

    class FakeVLLM(HFLM):  # lm-eval's VLLM signature; generation by HFLM from the same folder
        def __init__(self, pretrained, tokenizer, dtype, batch_size, seed, max_model_len, trust_remote_code):
            built.append(
                {
                    "pretrained": pretrained,
                    "files": sorted(p.name for p in Path(pretrained).iterdir()),
                    "batch_size": batch_size,
                    "seed": seed,
                }
            )
            model = Checkpoint(pretrained).load_model()  # what vLLM loads, from the folder it was given
            super().__init__(pretrained=model, tokenizer=load_tokenizer(tokenizer), batch_size=batch_size)

    monkeypatch.setattr(backends, "find_spec", lambda name: object())
    monkeypatch.setattr(backends, "vllm_class", lambda: FakeVLLM)
    tokenizer = load_tokenizer(pico_world.base)
    model = Checkpoint(pico_world.model("count")).load_model()
    with_vllm = Evaluator("toy_count", include_tasks=[pico_world.tasks], eval_backend="vllm", batch_size=8).evaluate(model, tokenizer)
    with_hf = Evaluator("toy_count", include_tasks=[pico_world.tasks], batch_size=8).evaluate(model, tokenizer)
    assert with_vllm["toy_count"].value == with_hf["toy_count"].value and with_vllm["toy_count"].samples == with_hf["toy_count"].samples
    assert built and built[0]["batch_size"] == 8 and built[0]["seed"] == 1234 and "config.json" in built[0]["files"]
    assert any(name.endswith(".safetensors") for name in built[0]["files"]) and not Path(built[0]["pretrained"]).exists()


def test_code_tasks_generate_here_and_run_the_code_in_the_child(toy_world, count_code_task, monkeypatch):
    """The model generates in this process (no copy of it is written); the sandboxed child only builds the prompts and
    runs the completions: the code task's score equals the same task's in-process score, on the same completions."""
    import json
    import os

    import hf_mergeguard.io.hf_models as hf_models

    tasks, record = count_code_task

    def no_copy(*args, **kwargs):
        raise AssertionError("a code task wrote a copy of the model")

    monkeypatch.setattr(hf_models, "save_model", no_copy)
    model = Checkpoint(toy_world.model("count")).load_model()
    tokenizer = load_tokenizer(toy_world.base)
    code = Evaluator("toy_count_code", include_tasks=[tasks], allow_code_eval=True, batch_size=64)
    scored = code.evaluate(model, tokenizer)["toy_count_code"]
    plain = Evaluator("toy_count", include_tasks=[toy_world.tasks], batch_size=64).evaluate(model, tokenizer)["toy_count"]
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert scored.samples == toy_world.config.test_size == len(runs)
    assert {r["pid"] for r in runs} != {os.getpid()}  # executed in the child
    # The same completions as the in-process task's, so the same score (and the toy world's own scorer's).
    assert scored.value == pytest.approx(plain.value, abs=1e-9) and plain.value > 0.5
    assert scored.value == pytest.approx(exact_match(model, make_tokenizer(), toy_world.rows("count")), abs=1e-9)
    # A second scoring reuses the prompts (one child run: the code), and scores the same.
    record.unlink()
    assert code.evaluate(model, tokenizer)["toy_count_code"].value == scored.value and len(code._code_requests_by_documents) == 1
    # The race knows a code task's documents (from the requests the child builds): --limit's seeded subset, or all.
    from hf_mergeguard.evaluation.sampling import subsample

    assert code.document_indices() == {"toy_count_code": list(range(toy_world.config.test_size))}
    limited = Evaluator("toy_count_code", include_tasks=[tasks], allow_code_eval=True, limit=20)
    assert limited.document_indices() == {"toy_count_code": sorted(subsample("toy_count_code", toy_world.config.test_size, 20))}
    # A race's part of the prompts (``samples``): the child runs exactly those documents' completions, and the score is
    # the in-process task's on the same documents.
    part = sorted(subsample("toy_count_code", toy_world.config.test_size, 33))
    record.unlink()
    on_part = code.evaluate(model, tokenizer, samples={"toy_count_code": part})["toy_count_code"]
    plain_part = Evaluator("toy_count", include_tasks=[toy_world.tasks]).evaluate(model, tokenizer, samples={"toy_count": part})
    assert on_part.samples == 33 == len(record.read_text().splitlines())
    assert on_part.value == pytest.approx(plain_part["toy_count"].value, abs=1e-9)
