"""GSM8K and HumanEval offline: lm-eval's built-in task definitions scored on local rows (``--task-data``), with
``code_eval`` loaded from the copy shipped with the package, on a machine with an empty HF cache and no Hub.

The rows are a handful written in each dataset's own format (GSM8K: question/answer with ``#### N``; HumanEval:
task_id/prompt/canonical_solution/test/entry_point), as JSON lines and as parquet in the Hub's file layout."""

import json
import shutil

import pytest

from hf_mergeguard.data import hub_datasets
from hf_mergeguard.errors import ConfigError
from hf_mergeguard.evaluation import Evaluator, load_tokenizer
from hf_mergeguard.evaluation.local_data import parse_task_data, task_data_identity
from hf_mergeguard.evaluation.tasks import TaskCatalog
from hf_mergeguard.io.checkpoint import Checkpoint

GSM8K_TRAIN = [
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her friends in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    ),
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
        "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    ),
    ("Betty has 3 apples and buys 4 more. How many apples does she have?", "3 + 4 = <<3+4=7>>7\n#### 7"),
    ("A box holds 6 eggs. How many eggs are in 5 boxes?", "6 * 5 = <<6*5=30>>30\n#### 30"),
    ("Tom reads 12 pages a day. How many pages does he read in 3 days?", "12 * 3 = <<12*3=36>>36\n#### 36"),
    ("Sam had 20 marbles and lost 8. How many are left?", "20 - 8 = <<20-8=12>>12\n#### 12"),
]
GSM8K_TEST = [
    (
        "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends "
        "every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in "
        "dollars does she make every day at the farmers' market?",
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
        "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18",
    ),
    (
        "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
        "It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric\n#### 3",
    ),
    ("Mia has 5 pencils and gets 9 more. How many pencils does she have?", "5 + 9 = <<5+9=14>>14\n#### 14"),
]
HUMANEVAL = [
    {
        "task_id": "HumanEval/0",
        "entry_point": "add",
        "canonical_solution": "    return a + b\n",
        "prompt": 'def add(a: int, b: int) -> int:\n    """ Add two numbers.\n    >>> add(2, 3)\n    5\n    """\n',
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    },
    {
        "task_id": "HumanEval/1",
        "entry_point": "is_even",
        "canonical_solution": "    return n % 2 == 0\n",
        "prompt": 'def is_even(n: int) -> bool:\n    """ Whether n is even.\n    >>> is_even(4)\n    True\n    """\n',
        "test": "\n\ndef check(candidate):\n    assert candidate(4) is True\n    assert candidate(7) is False\n",
    },
    {
        "task_id": "HumanEval/2",
        "entry_point": "reverse",
        "canonical_solution": "    return s[::-1]\n",
        "prompt": 'def reverse(s: str) -> str:\n    """ The string backwards.\n    >>> reverse(\'ab\')\n    \'ba\'\n    """\n',
        "test": "\n\ndef check(candidate):\n    assert candidate('abc') == 'cba'\n    assert candidate('') == ''\n",
    },
]


def gsm8k_rows(pairs):
    return [{"question": q, "answer": a} for q, a in pairs]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    """An empty HF cache (the code-eval child inherits it): nothing cached can stand in for the Hub."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")


@pytest.mark.slow
def test_gsm8k_and_humaneval_score_local_rows_with_lm_eval_definitions_and_no_hub(pico_world, tmp_path, no_hub_cache, capsys):
    from hf_mergeguard.cli.main import main

    # GSM8K as JSON lines in a folder with the Hub's configurations (main/, socratic/): the task's dataset_name picks main.
    gsm8k = tmp_path / "gsm8k"
    write_jsonl(gsm8k / "main" / "train.jsonl", gsm8k_rows(GSM8K_TRAIN))
    write_jsonl(gsm8k / "main" / "test.jsonl", gsm8k_rows(GSM8K_TEST))
    write_jsonl(gsm8k / "socratic" / "test.jsonl", gsm8k_rows(GSM8K_TRAIN))
    # HumanEval as parquet, laid out as the Hub's openai/openai_humaneval is.
    humaneval = tmp_path / "humaneval"
    write_parquet(humaneval / "openai_humaneval" / "test-00000-of-00001.parquet", HUMANEVAL)
    # The pico world's base, with a context long enough for the tasks' generation caps (256 and 1024 new tokens).
    model = tmp_path / "model"
    shutil.copytree(pico_world.base, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))

    # The command line, on GSM8K (scored in this process).
    code = main(["evaluate", str(model), "--tasks", "gsm8k", "--task-data", f"gsm8k={gsm8k}", "--json", "--batch-size", "8"])
    scores = json.loads(capsys.readouterr().out)
    assert code == 0
    # Every local row scored, with the task's own metric (a random model solves none).
    assert (scores["gsm8k"]["metric"], scores["gsm8k"]["samples"]) == ("exact_match,strict-match", len(GSM8K_TEST))

    evaluator = Evaluator(["gsm8k", "humaneval"], task_data=[f"gsm8k={gsm8k}", f"humaneval={humaneval}"], allow_code_eval=True)
    # lm-eval's GSM8K prompt on the main configuration's test rows, its 5 few-shot examples from the train rows.
    assert [row["prompt"] for row in evaluator.documents()] == [f"Question: {q}\nAnswer:" for q, _ in GSM8K_TEST]
    task = evaluator.task_object("gsm8k")
    assert [doc["question"] for doc in task.fewshot_docs()] == [q for q, _ in GSM8K_TRAIN]
    # Its metric on these rows: the right final number scores 1, a wrong one 0.
    first = list(task.eval_docs)[0]
    assert task.process_results(first, ["18"])["exact_match"] == 1.0 and task.process_results(first, ["17"])["exact_match"] == 0.0

    # HumanEval: the model generates here, code_eval executes the completions in the child, offline.
    code_task = evaluator.restricted_to(["humaneval"])
    tokenizer = load_tokenizer(model)
    scored = code_task.evaluate(Checkpoint(model).load_model(), tokenizer)["humaneval"]
    assert (scored.metric, scored.value, scored.samples) == ("pass@1,create_test", 0.0, len(HUMANEVAL))
    # The same child on known completions: the canonical solutions of the first two rows pass, a wrong third fails.
    requests = code_task._code_requests(None, tokenizer)
    assert sorted(prompt for _, prompt, *_ in requests) == sorted(row["prompt"] for row in HUMANEVAL)
    solution = {row["prompt"]: row["canonical_solution"] for row in HUMANEVAL[:2]}
    completions = {key: solution.get(prompt, "    return None\n") for key, prompt, *_ in requests}
    replayed = code_task._scores_from(code_task._run_code_child("score", None, tokenizer, completions=completions))["humaneval"]
    assert (replayed.value, replayed.samples) == (pytest.approx(2 / 3), len(HUMANEVAL))


def test_the_other_format_of_each_dataset_loads_too(tmp_path, no_hub_cache):
    """GSM8K as parquet in the Hub's layout, HumanEval as one JSON-lines file of its test split."""
    gsm8k = tmp_path / "gsm8k"
    write_parquet(gsm8k / "main" / "train-00000-of-00001.parquet", gsm8k_rows(GSM8K_TRAIN))
    write_parquet(gsm8k / "main" / "test-00000-of-00001.parquet", gsm8k_rows(GSM8K_TEST))
    humaneval = write_jsonl(tmp_path / "humaneval.jsonl", HUMANEVAL)
    evaluator = Evaluator(["gsm8k", "humaneval"], task_data={"gsm8k": gsm8k, "humaneval": humaneval}, allow_code_eval=True)
    assert evaluator.catalog.local["gsm8k"].builder == "parquet" and evaluator.catalog.local["humaneval"].builder == "json"
    assert [row["prompt"] for row in evaluator.documents()] == [f"Question: {q}\nAnswer:" for q, _ in GSM8K_TEST]
    requests = evaluator._code_requests(None, None)
    assert sorted(prompt for _, prompt, *_ in requests) == sorted(row["prompt"] for row in HUMANEVAL)
    # The card's `datasets` names no evaluation dataset for rows read from local files.
    assert hub_datasets(None, ["gsm8k", "humaneval"], evaluator) == []


def test_the_plan_counts_local_rows(tmp_path):
    from hf_mergeguard.plan import task_costs

    gsm8k = tmp_path / "gsm8k"
    write_parquet(gsm8k / "main" / "train-00000-of-00001.parquet", gsm8k_rows(GSM8K_TRAIN))
    write_parquet(gsm8k / "main" / "test-00000-of-00001.parquet", gsm8k_rows(GSM8K_TEST))
    (local,) = task_costs(["gsm8k"], [], None, [f"gsm8k={gsm8k}"])
    (hub,) = task_costs(["gsm8k"], [], None)
    assert (local.prompts, hub.prompts) == (len(GSM8K_TEST), 1319)
    assert "test-00000-of-00001.parquet (3 rows)" in local.prompts_from


@pytest.mark.parametrize(
    "layout, entry, message",
    [
        ({"test.jsonl": GSM8K_TEST}, "gsm8k=test.jsonl", "draws its 5 few-shot examples from the 'train' split"),
        ({"train.jsonl": GSM8K_TRAIN}, "gsm8k=.", "no file of the 'test' split"),
        ({"train.jsonl": GSM8K_TRAIN, "test.parquet": GSM8K_TEST}, "gsm8k=.", "mixes JSON and parquet"),
        ({"a/test.jsonl": GSM8K_TEST, "b/test.jsonl": GSM8K_TEST}, "gsm8k=.", "has files in several folders"),
        ({"rows.jsonl": [{"q": "1+1?", "a": "#### 2"}]}, "humaneval=rows.jsonl", "lack a column humaneval's doc_to_text reads"),
        ({"rows.csv": []}, "humaneval=rows.csv", "is not .jsonl, .json or .parquet"),
        ({}, "humaneval=missing.jsonl", "does not exist"),
        ({}, "gsm8k", "is not TASK=PATH"),
        ({"test.jsonl": GSM8K_TEST}, "arc_easy=test.jsonl", "which is not among the tasks"),
    ],
)
def test_bad_task_data_is_refused_before_any_work_naming_the_fix(tmp_path, monkeypatch, layout, entry, message):
    for name, rows in layout.items():
        rows = gsm8k_rows(rows) if rows and isinstance(rows[0], tuple) else rows
        (write_parquet if name.endswith(".parquet") else write_jsonl)(tmp_path / name, rows)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message) as raised:
        TaskCatalog(["gsm8k", "humaneval"], [], parse_task_data([entry]))
    assert raised.value.hint  # every refusal says what to do


def test_the_command_line_refuses_bad_task_data_with_exit_2_before_any_work(pico_world, tmp_path, capsys):
    from hf_mergeguard.cli.main import main

    test_only = write_jsonl(tmp_path / "test.jsonl", gsm8k_rows(GSM8K_TEST))
    argv = ["check", str(pico_world.model("count")), "--base", str(pico_world.base), "--tasks", "gsm8k", "--plan"]
    code = main(argv + ["--task-data", f"gsm8k={test_only}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "Error: --task-data gsm8k=" in err and "from the 'train' split, which is not there" in err and "Hint: Give a folder" in err


def test_runs_on_local_rows_are_keyed_by_the_files_and_runs_without_them_as_before(tmp_path, monkeypatch):
    """Work folders, finished self-tests and cached scores are keyed by the rows' files (path, size, modification time):
    protect's record and the self-test's are the same, rows edited in place give another key, and a run without
    --task-data has the key it had before the option existed."""
    import os

    from hf_mergeguard.config import build_protect_config
    from hf_mergeguard.pipeline import _run_config
    from hf_mergeguard.selftest.config import SelfTestConfig
    from hf_mergeguard.selftest.freeriders import selftest_evaluator
    from hf_mergeguard.workdir import _keyed_options, work_dir_for

    rows = write_jsonl(tmp_path / "humaneval.jsonl", HUMANEVAL)
    monkeypatch.chdir(tmp_path)  # a relative path, as typed
    options = {"model": "m", "base": "b", "tasks": ["humaneval"], "method": "params"}
    config = build_protect_config(None, {**options, "task_data": ["humaneval=humaneval.jsonl"]})
    evaluator = selftest_evaluator(["humaneval"], [], [], SelfTestConfig(allow_code_eval=True), task_data=config.task_data)
    recorded_by_the_self_test = task_data_identity(evaluator.catalog.task_data)  # what selftest.matrix writes
    stat = rows.stat()
    assert _run_config(config)["task_data"] == recorded_by_the_self_test == {"humaneval": [[str(rows), stat.st_size, stat.st_mtime_ns]]}
    folder = work_dir_for(config)
    os.utime(rows, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the rows edited in place
    assert work_dir_for(config) != folder and _run_config(config)["task_data"] != recorded_by_the_self_test
    without = build_protect_config(None, options)
    assert "task_data" not in _run_config(without) and "task_data" not in _keyed_options(without)


def test_a_tag_or_a_task_without_its_training_file_is_said(tmp_path, caplog):
    """--task-data names one YAML task: a tag standing for several is refused; a split the task names but the folder
    lacks (here its training split) is dropped with a warning, not silently."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "qa.yaml").write_text(
        "task: qa_local\ntag: my_tag\ndataset_path: some/dataset\noutput_type: generate_until\ntraining_split: train\n"
        "test_split: test\ndoc_to_text: 'Question: {{question}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    rows = write_jsonl(tmp_path / "rows" / "test.jsonl", gsm8k_rows(GSM8K_TEST))
    with pytest.raises(ConfigError, match="my_tag is a tag of tasks, not one task"):
        TaskCatalog(["my_tag"], [folder], parse_task_data([f"my_tag={rows}"]))
    catalog = TaskCatalog(["qa_local"], [folder], parse_task_data([f"qa_local={rows.parent}"]))
    assert catalog.local["qa_local"].dropped_splits == ("training_split",)
    assert "no local file of training_split 'train'" in caplog.text
