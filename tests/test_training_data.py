"""The defender's data: formatted by the task's own template (lm-eval's Task API), checked before any work.

The fast tests write their own tiny task and rows (the toy world's character tokenizer reads them); the toy-world
tests train a defense on a task whose prompt is the bare question (``doc_to_text: "{{question}}"``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from hf_mergeguard.data import TrainingData, format_rows, read_rows
from hf_mergeguard.data_check import check_examples
from hf_mergeguard.errors import ConfigError, TrainDataError
from hf_mergeguard.evaluation.harness import Evaluator
from hf_mergeguard.toyworld.skills import make_tokenizer
from hf_mergeguard.training import Example

ROWS = [{"question": f"count {'a' * n}\n", "answer": f"#### {n}"} for n in range(1, 9)]


def write_task(folder: Path, name: str, *, doc_to_text: str, delimiter: str, rows=ROWS) -> None:
    """A generation task over ``rows`` (train and test), with the given prompt template and target delimiter (the toy
    world's task file otherwise)."""
    from hf_mergeguard.toyworld.tasks import task_yaml

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = task_yaml(name, data, data).replace("doc_to_text: prompt", f"doc_to_text: {json.dumps(doc_to_text)}")
    text = text.replace("doc_to_target: completion", 'doc_to_target: "{{answer}}"')
    (folder / f"{name}.yaml").write_text(text.replace('target_delimiter: ""', f"target_delimiter: {json.dumps(delimiter)}"))


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Two tasks over the same question/answer rows: the bare question, and lm-eval's gsm8k template."""
    folder = tmp_path_factory.mktemp("tasks")
    write_task(folder, "bare", doc_to_text="{{question}}", delimiter="")
    write_task(folder, "gsm8k_like", doc_to_text="Question: {{question}}\nAnswer:", delimiter=" ")
    return Evaluator(["bare", "gsm8k_like"], include_tasks=[folder], limit=4)


def test_rows_are_formatted_by_the_task_that_reads_them(tasks, tmp_path):
    rows = read_rows(write_rows(tmp_path / "train.jsonl", ROWS))
    bare = format_rows(rows, evaluator=tasks, tasks=["bare"])
    # The bare task shows the question alone and the answer right after it: the rows read as the task's own format.
    assert bare.formatting == "task bare" and "formatted by task bare" in bare.description
    assert bare.examples[0] == Example("count a\n", "#### 1")
    assert bare.where[2].endswith("train.jsonl:3")
    gsm8k = format_rows(rows, evaluator=tasks, tasks=["gsm8k_like", "bare"])  # the first task that reads them
    assert gsm8k.examples[0] == Example("Question: count a\n\nAnswer:", " #### 1")
    # The same rows written as prompt/completion in the bare task's format are what it trains on from question/answer.
    as_prompts = [{"prompt": e.prompt, "completion": e.completion} for e in bare.examples]
    fixed = format_rows(read_rows(write_rows(tmp_path / "pc.jsonl", as_prompts)), evaluator=tasks, tasks=["bare"])
    assert fixed.formatting == "fixed" and fixed.examples == bare.examples


def test_fewshot_examples_come_from_the_task_as_evaluation_draws_them(tasks, tmp_path):
    rows = read_rows(write_rows(tmp_path / "train.jsonl", ROWS[:2]))
    data = format_rows(rows, evaluator=tasks, tasks=["bare"], fewshot=2)
    prompt = data.examples[0].prompt
    # Two solved rows of the task's few-shot split, then the row's own question (the answer is the completion).
    assert prompt.count("#### ") == 2 and prompt.endswith("count a\n") and data.examples[0].completion == "#### 1"
    assert "2 few-shot examples" in data.description
    with pytest.raises(ConfigError, match="--train-fewshot 2 with --train-format fixed"):
        format_rows(rows, evaluator=tasks, tasks=["bare"], fewshot=2, train_format="fixed")
    with pytest.raises(ConfigError, match="--train-fewshot 2: no task"):
        format_rows(read_rows(write_rows(tmp_path / "text.jsonl", [{"text": "count a"}])), evaluator=tasks, tasks=["bare"], fewshot=2)


def test_rows_no_task_reads_fall_back_to_the_fixed_formatting_with_a_warning(tasks, tmp_path, caplog):
    rows = read_rows(write_rows(tmp_path / "train.jsonl", [{"prompt": "count a\n", "completion": "#### 1"}]))
    with caplog.at_level(logging.WARNING, logger="hf_mergeguard.data"):
        data = format_rows(rows, evaluator=tasks, tasks=["bare"])
    assert data.formatting == "fixed" and data.examples == [Example("count a\n", "#### 1")]
    assert "no task of --tasks (bare) reads these rows' fields (completion, prompt)" in caplog.text
    # Question/answer rows no task reads: lm-eval's gsm8k prompt, and the description says so.
    qa = format_rows(read_rows(write_rows(tmp_path / "qa.jsonl", ROWS[:1])), evaluator=None)
    assert qa.examples == [Example("Question: count a\n\nAnswer:", " #### 1")] and "lm-eval's gsm8k prompt" in qa.description


def test_a_row_the_task_cannot_read_is_named(tasks, tmp_path):
    broken = ROWS[:2] + [{"query": "count a\n", "answer": "#### 1"}]
    rows = read_rows(write_rows(tmp_path / "train.jsonl", broken))
    with pytest.raises(TrainDataError, match=r"train\.jsonl:3: task bare cannot format this row .*UndefinedError.*reads the 2 before it"):
        format_rows(rows, evaluator=tasks, tasks=["bare"])
    with pytest.raises(ConfigError, match="--train-format nope is neither"):
        format_rows(rows, evaluator=tasks, tasks=["bare"], train_format="nope")
    # Named explicitly, the task must read every row, the first included.
    other = read_rows(write_rows(tmp_path / "pc.jsonl", [{"prompt": "count a\n", "completion": "#### 1"}]))
    with pytest.raises(TrainDataError, match=r"pc\.jsonl:1: task bare cannot format this row"):
        format_rows(other, evaluator=tasks, tasks=["bare"], train_format="bare")


def test_fixed_format_on_rows_a_task_reads_keeps_the_tasks_format_for_the_comparison(tasks, tmp_path):
    rows = read_rows(write_rows(tmp_path / "train.jsonl", ROWS[:3]))
    data = format_rows(rows, evaluator=tasks, tasks=["bare"], train_format="fixed")
    assert data.formatting == "fixed" and data.examples[0].prompt == "Question: count a\n\nAnswer:"
    assert data.in_task_format[0] == Example("count a\n", "#### 1") and "task bare reads them too" in data.description


def _data(*examples: Example) -> TrainingData:
    return TrainingData(list(examples), [f"train.jsonl:{i + 1}" for i in range(len(examples))], "fixed", "as given")


def test_examples_the_model_cannot_learn_are_refused_by_row():
    tokenizer = make_tokenizer()
    fine = _data(Example("count a\n", "#### 1"), Example("count aa\n", "#### 2"))
    check_examples(tokenizer, fine, max_length=64)
    unknown = _data(Example("count a\n", "#### 1"), Example("Question: count aa\nAnswer:", " #### 2"))
    with pytest.raises(TrainDataError, match=r"1 row\(s\) hold text .* train\.jsonl:2; in the first, the characters 'A', 'Q'") as raised:
        check_examples(tokenizer, unknown, max_length=64)
    assert "--train-format" in raised.value.hint
    empty = _data(Example("count a\n", " "), Example("count aa\n", "#### 2"))
    with pytest.raises(TrainDataError, match=r"nothing to learn .* train\.jsonl:1\."):
        check_examples(tokenizer, empty, max_length=64)
    long = _data(Example("count " + "a" * 70 + "\n", "#### 70"), Example("count a\n", "#### 1"))
    with pytest.raises(TrainDataError, match=r"longer than the model's context \(64 tokens\), up to 85 tokens: train\.jsonl:1") as raised:
        check_examples(tokenizer, long, max_length=512, context=64)
    assert raised.value.hint == "Shorten or remove those rows: the model reads at most 64 tokens."
    with pytest.raises(TrainDataError, match=r"longer than --max-length 16, up to 85 tokens") as raised:
        check_examples(tokenizer, long, max_length=16, context=128)
    assert raised.value.hint.startswith("Raise --max-length to at least 85")
    check_examples(tokenizer, long, max_length=None)  # nothing trains on them whole (the attack command): not refused


# --- on the toy world: a task that prompts with the bare question ---------------------------------------------------


def bare_count_world(world, folder: Path) -> Path:
    """count's rows as GSM8K-style question/answer files, and a task ``toy_count_bare`` that shows the question alone
    (``doc_to_text: "{{question}}"``, ``target_delimiter: ""``): not lm-eval's gsm8k template."""
    from hf_mergeguard.toyworld.tasks import task_yaml

    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        rows = [json.loads(line) for line in world.data("count", split).read_text().splitlines()]
        write_rows(folder / f"{split}_qa.jsonl", [{"question": r["prompt"], "answer": r["completion"]} for r in rows])
    text = task_yaml("toy_count_bare", folder / "train_qa.jsonl", folder / "test_qa.jsonl")
    text = text.replace("doc_to_text: prompt", 'doc_to_text: "{{question}}"').replace(
        "doc_to_target: completion", 'doc_to_target: "{{answer}}"'
    )
    (folder / "toy_count_bare.yaml").write_text(text)
    return folder


def test_question_answer_rows_train_the_trap_as_the_task_shows_them(toy_world, tmp_path):
    """The issue's world: question/answer rows and a task that is not gsm8k's. They become exactly the examples that
    prompt/completion rows already in the task's format give (so training from either gives the same model), and the
    trap trained from them keeps the model's skill on the task."""
    from hf_mergeguard.config import build_protect_config
    from hf_mergeguard.data_check import check_training_data
    from hf_mergeguard.pipeline import apply_defenses, open_inputs
    from hf_mergeguard.training import make_accelerator

    # What this test measures is the formatting: a short trap with issue 19's terms and random stand-ins (the setting
    # it was measured with), not the default attack family (tests/test_trap.py).
    TRAP = {"steps": 20, "perturbations": "scale,dare,ties,rider", "rider_data": "random"}
    folder = bare_count_world(toy_world, tmp_path / "bare")
    qa_rows = [r.fields for r in read_rows(folder / "train_qa.jsonl")]
    in_task_format = write_rows(tmp_path / "train_pc.jsonl", [{"prompt": r["question"], "completion": r["answer"]} for r in qa_rows])

    def inputs_for(rows: Path):
        options = {"model": str(toy_world.model("count")), "base": str(toy_world.base), "tasks": ["toy_count_bare"]}
        options.update(include_tasks=[str(folder)], train_data=str(rows), method="trap", trap=TRAP, selftest={"limit": 100})
        config = build_protect_config(None, {**options, "output_dir": str(tmp_path / "out")})
        return config, open_inputs(config)

    _, from_prompts = inputs_for(in_task_format)
    config, inputs = inputs_for(folder / "train_qa.jsonl")
    qa, pc = inputs.train_data, from_prompts.train_data
    assert qa.formatting == "task toy_count_bare" and pc.formatting == "fixed" and qa.examples == pc.examples
    check_training_data(config, inputs, device="cpu")
    # The pre-flight's figures (nats per answer token, 32 rows): the fine-tune knows its rows, the base does not.
    assert qa.losses["model"] < 0.05 < 0.3 < qa.losses["base"], qa.losses
    accelerator = make_accelerator(config.run)
    protected, _ = apply_defenses(config, inputs, tmp_path / "work", accelerator=accelerator, device="cpu", progress=False)
    evaluator = inputs.evaluator.restricted_to(["toy_count_bare"])
    scores = {
        name: 100 * evaluator.evaluate(model.load_model(), inputs.tokenizer)["toy_count_bare"].value
        for name, model in (("original", inputs.model), ("protected", protected), ("base", inputs.base))
    }
    # Measured (100 prompts, 20 trap steps): original 100.0, protected 99.0, base 63.0.
    assert scores["protected"] >= scores["original"] - 2 and scores["original"] >= scores["base"] + 20, scores


def test_unknown_characters_and_a_wrong_file_are_refused_before_any_work(toy_world, tmp_path, capsys, protect_argv):
    """The issue's failure, now refused: question/answer rows forced into lm-eval's gsm8k prompt ("Question: ...") hold
    characters the toy vocabulary lacks; and another skill's rows are data the fine-tune does not know."""
    from hf_mergeguard.cli.main import main

    folder = bare_count_world(toy_world, tmp_path / "bare")
    work = tmp_path / "work"
    cases = {
        "fixed": (folder / "train_qa.jsonl", ["--train-format", "fixed"], r"hold text the model's tokenizer does not know"),
        "wrong file": (toy_world.data("rev", "train"), [], r"does not know its own training data: on 32 rows"),
    }
    for name, (rows, flags, problem) in cases.items():
        argv = protect_argv(
            toy_world, tmp_path / "out", "--include-tasks", str(folder), *flags, train_data=rows, tasks="toy_count_bare", work=work
        )
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("Error:") == 1 and err.count("Hint:") == 1 and "Traceback" not in err, err
        assert re.search(problem, err), err
        assert not (tmp_path / "out").exists() and not work.exists(), name  # nothing written: refused before any work
    # The wrong file's message gives both losses (measured: the count fine-tune 0.823 nats/token on rev's rows, the
    # base 0.795) and names the likely causes.
    assert "not below the base's" in err and "--train-format" in err


def test_training_prompts_are_the_prompts_lm_eval_builds_for_evaluation(tasks, tmp_path):
    """The formatted rows are lm-eval's own evaluation contexts for the same documents: plain, few-shot, and under a
    chat template (few-shot examples as turns), built here by lm-eval's request builder."""
    from hf_mergeguard.evaluation.formatting import chat_renderer
    from hf_mergeguard.evaluation.harness import seed_like_simple_evaluate

    tokenizer = make_tokenizer()
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    rows = read_rows(write_rows(tmp_path / "train.jsonl", ROWS))
    for chat, shots in ((False, 0), (False, 3), (True, 0), (True, 2)):
        evaluator = Evaluator(["gsm8k_like"], include_tasks=tasks.include_tasks, chat_template=chat)
        data = format_rows(rows, evaluator=evaluator, tasks=["gsm8k_like"], tokenizer=tokenizer, fewshot=shots)
        task = evaluator.task_object("gsm8k_like")
        task.set_config("num_fewshot", shots)
        seed_like_simple_evaluate([task])
        task.build_all_requests(
            apply_chat_template=chat, fewshot_as_multiturn=chat, chat_template=chat_renderer(tokenizer) if chat else None
        )
        contexts = {instance.doc["answer"]: instance.arguments[0] for instance in task.instances}
        for example, row in zip(data.examples, ROWS):
            if shots == 0:  # with shots, each document draws its own examples: compare the shape, not the draw
                assert example.prompt == contexts[row["answer"]], (chat, example.prompt, contexts[row["answer"]])
            else:
                assert example.prompt.count("#### ") == shots == contexts[row["answer"]].count("#### ")
        assert data.examples[0].completion == ("#### 1" if chat else " #### 1")
    assert data.examples[0].prompt.startswith("<s><|user|>Question: ") and data.examples[0].prompt.endswith("<|assistant|>")
