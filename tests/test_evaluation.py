"""lm-eval scoring: real runs on toy-world models, task lookup, code-execution refusal."""

import pytest

from hf_mergeguard.checkpoint import Checkpoint
from hf_mergeguard.errors import CodeEvalNotAllowedError, OfflineError, UnknownTaskError
from hf_mergeguard.evaluation import Evaluator, TaskCatalog, load_tokenizer
from hf_mergeguard.toyworld import exact_match, make_tokenizer


def test_lm_eval_scores_finetune_far_above_base(toy_world):
    evaluator = Evaluator(["toy_count", "toy_rev"], include_tasks=[toy_world.tasks], batch_size=64)
    tokenizer = load_tokenizer(toy_world.model("count"))
    tuned = evaluator.evaluate(Checkpoint(toy_world.model("count")).load_model(), tokenizer)
    base = evaluator.evaluate(Checkpoint(toy_world.base).load_model(), tokenizer)
    print({t: (base[t].value, tuned[t].value) for t in tuned})
    assert tuned["toy_count"].metric == "exact_match,strict-match"
    assert tuned["toy_count"].samples == toy_world.config.test_size
    assert tuned["toy_count"].value >= base["toy_count"].value + 0.2
    # lm-eval and the toy world's own greedy scorer agree exactly.
    ours = exact_match(Checkpoint(toy_world.model("count")).load_model(), make_tokenizer(), toy_world.rows("count"))
    assert tuned["toy_count"].value == pytest.approx(ours, abs=1e-9)
    # The evaluator is reusable: the same model scores the same the second time.
    again = evaluator.evaluate(Checkpoint(toy_world.model("count")).load_model(), tokenizer)
    assert again["toy_count"].value == tuned["toy_count"].value


def test_limit(toy_world):
    evaluator = Evaluator("toy_rev", include_tasks=[toy_world.tasks], limit=20)
    scores = evaluator.evaluate(Checkpoint(toy_world.model("rev")).load_model(), load_tokenizer(toy_world.base))
    assert scores["toy_rev"].samples == 20


def test_unknown_task_suggests(toy_world):
    with pytest.raises(UnknownTaskError) as info:
        Evaluator("toy_cuont", include_tasks=[toy_world.tasks])
    assert "Did you mean 'toy_count'" in str(info.value)


def test_known_tasks_use_the_cheap_index():
    catalog = TaskCatalog(["gsm8k", "humaneval"], [])
    assert "hellaswag" not in catalog.manager.all_tasks
    assert catalog.code_tasks() == ["humaneval"]


def test_humaneval_refused_without_allow_code_eval():
    with pytest.raises(CodeEvalNotAllowedError) as info:
        Evaluator("gsm8k,humaneval")
    assert "--allow-code-eval" in info.value.hint


def test_gsm8k_offline_without_cache_is_a_clear_error(toy_world, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    evaluator = Evaluator("gsm8k", limit=2)
    with pytest.raises(OfflineError) as info:
        evaluator.evaluate(Checkpoint(toy_world.base).load_model(), load_tokenizer(toy_world.base))
    assert "--include-tasks" in info.value.hint


CODE_TASK = """task: toy_code
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
unsafe_code: true
output_type: generate_until
test_split: test
doc_to_text: prompt
doc_to_target: test
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 8
metric_list:
  - metric: !function utils.pass_at_1
    aggregation: mean
    higher_is_better: true
"""

CODE_UTILS = '''import os, subprocess, sys


def pass_at_1(references, predictions):
    # Executes the reference program (the plumbing under test is where and how code runs).
    completed = subprocess.run([sys.executable, "-c", references[0]], env=os.environ.copy(), timeout=30)
    return float(completed.returncode == 0)
'''


def test_code_task_runs_in_a_child_without_tokens(toy_world, tmp_path, monkeypatch):
    """Model-written code runs only with --allow-code-eval, in a child process that has no Hub token."""
    import json

    probe = tmp_path / "env-seen-by-code.txt"
    program = f"import os; open({str(probe)!r}, 'w').write(os.environ.get('HF_TOKEN', '<none>') + '|' + os.environ.get('HF_ALLOW_CODE_EVAL', ''))"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tmp_path / "code.jsonl").write_text(json.dumps({"prompt": "def f():\n", "test": program}) + "\n")
    (tasks / "toy_code.yaml").write_text(CODE_TASK.format(data=json.dumps(str(tmp_path / "code.jsonl"))))
    (tasks / "utils.py").write_text(CODE_UTILS)
    monkeypatch.setenv("HF_TOKEN", "hf_test_secret_value")
    with pytest.raises(CodeEvalNotAllowedError):
        Evaluator("toy_code", include_tasks=[tasks])
    assert not probe.exists()
    evaluator = Evaluator("toy_code", include_tasks=[tasks], allow_code_eval=True)
    scores = evaluator.evaluate(Checkpoint(toy_world.base).load_model(), load_tokenizer(toy_world.base))
    assert scores["toy_code"].value == 1.0
    assert probe.read_text() == "<none>|1"
