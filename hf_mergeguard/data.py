"""The defender's training data (``--train-data``): rows read from a JSONL file or a Hub dataset, then formatted as
the defender's task shows them, so that training, calibration and the attacks see what evaluation shows.

How rows become examples (``--train-format``; the log and ``selftest.json`` say which was used):

* ``auto`` (default): by the first of ``--tasks`` whose template reads every row, through lm-eval's Task API (the
  task's description, ``doc_to_text``, ``target_delimiter``, ``doc_to_target``, and the chat template when the run
  scores with one: :mod:`.evaluation.formatting`). When no task reads them: the fixed formatting below, and a warning.
* a task name: by that task; a row it cannot read is an error that names the row.
* ``fixed``: ``prompt``/``completion`` as they are; GSM8K-style ``question``/``answer`` as lm-eval's gsm8k prompt
  (``"Question: ...\\nAnswer:"`` + ``" <answer>"``); ``text`` with the loss on all of it.

``--train-fewshot N`` puts N of the task's own few-shot examples before each row, as evaluation does at N shots
(default 0: each row alone, which is how each few-shot example itself reads).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import ConfigError, OfflineError, TrainDataError
from .io.hub import looks_offline
from .training import Example

log = logging.getLogger(__name__)

COLUMN_SETS = (("prompt", "completion"), ("question", "answer"), ("text",))
FIXED = "fixed"
AUTO = "auto"


@dataclass(frozen=True)
class Row:
    """One row of the training data as read, and where it is (``train.jsonl:12``, ``org/data[11]``)."""

    where: str
    fields: dict


@dataclass
class TrainingData:
    """The formatted examples, the row each came from, and how they were formatted."""

    examples: list[Example]
    where: list[str]
    formatting: str  # "task <name>" or "fixed"
    description: str  # one sentence for the log, the report and error messages
    in_task_format: list[Example] | None = field(default=None, repr=False)  # the rows as a task shows them, when not chosen
    losses: dict | None = None  # the pre-flight's mean losses: the fine-tune's and the base's (:mod:`.data_check`)

    def record(self) -> dict:
        """What ``selftest.json`` keeps of the data (no rows: they may be private)."""
        return {"rows": len(self.examples), "formatting": self.formatting, "description": self.description, "losses": self.losses}


def fixed_example(row: Row) -> Example:
    """A row in the fixed formatting (the fallback for rows no task reads)."""
    fields = row.fields
    if isinstance(fields.get("prompt"), str) and isinstance(fields.get("completion"), str):
        return Example(fields["prompt"], fields["completion"])
    if isinstance(fields.get("question"), str) and isinstance(fields.get("answer"), str):
        return Example(f"Question: {fields['question']}\nAnswer:", f" {fields['answer']}")
    if isinstance(fields.get("text"), str):
        return Example("", fields["text"])
    raise TrainDataError(
        f"{row.where}: no usable columns (found {sorted(fields)}), and no task of --tasks reads this row.",
        "Give rows the fields the task's template reads, or prompt+completion, question+answer (GSM8K style), or text.",
    )


def read_rows(spec: str | Path, *, split: str = "train", limit: int | None = None) -> list[Row]:
    """The rows of a JSONL file, or of a Hub dataset (``name`` or ``name:config``), unformatted.

    Raises:
        TrainDataError: the file is missing, empty or malformed.
        OfflineError: a Hub dataset cannot be reached and is not cached.
    """
    path = Path(spec)
    if is_local_file(spec):
        if not path.is_file():
            raise TrainDataError(f"--train-data {path} does not exist.", "Pass a JSONL file or a Hub dataset name.")
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainDataError(
                    f"{path}:{number} is not valid JSON ({exc.msg}).", "Each line of a JSONL file must be one JSON object."
                ) from None
            if not isinstance(fields, dict):
                raise TrainDataError(f"{path}:{number}: expected a JSON object, got {type(fields).__name__}.")
            rows.append(Row(f"{path}:{number}", fields))
            if limit and len(rows) >= limit:
                break
        if not rows:
            raise TrainDataError(f"--train-data {path} is empty.", "Give at least one training example.")
        return rows
    return _read_hub_dataset(str(spec), split, limit)


def is_local_file(spec: str | Path) -> bool:
    """Whether a ``--train-data`` value names a local file (a JSONL path, or anything that exists), not a Hub dataset."""
    path = Path(spec)
    return path.suffix in (".jsonl", ".json") or path.exists()


def _read_hub_dataset(name: str, split: str, limit: int | None) -> list[Row]:
    import datasets

    dataset_name, _, config = name.partition(":")
    try:
        dataset = datasets.load_dataset(dataset_name, config or None, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "cannot reach"
        text = f"{type(exc).__name__}: {exc}"
        if looks_offline(text):
            raise OfflineError(
                f"Dataset {name} cannot be loaded: it is not in the local cache and the Hub cannot be reached, or no such dataset exists.",
                "Check the name; run once with network access so it lands in the HF cache, or pass a local JSONL file.",
            ) from exc
        raise TrainDataError(f"Cannot load dataset {name} (split {split}): {text[:300]}") from exc
    rows = dataset.select(range(min(limit, len(dataset)))) if limit else dataset
    read = [Row(f"{name}[{i}]", dict(row)) for i, row in enumerate(rows)]
    if not read:
        raise TrainDataError(f"Dataset {name} split {split} is empty.")
    return read


def load_train_examples(spec: str | Path, *, split: str = "train", limit: int | None = None) -> list[Example]:
    """Rows of ``spec`` in the fixed formatting (no task involved: the trap's stand-in free-rider data, scripts)."""
    return [fixed_example(row) for row in read_rows(spec, split=split, limit=limit)]


def load_training_data(config, evaluator, tokenizer) -> TrainingData:
    """``config.train_data`` (a ``ProtectConfig`` or ``CheckConfig``) read and formatted for the defender's tasks."""
    rows = read_rows(config.train_data, split=config.train_split)
    data = format_rows(
        rows, evaluator=evaluator, tasks=config.tasks, tokenizer=tokenizer, train_format=config.train_format, fewshot=config.train_fewshot
    )
    log.info("Training data: %d rows of %s, %s", len(data.examples), config.train_data, data.description)
    return data


def format_rows(
    rows: Sequence[Row],
    *,
    evaluator=None,
    tasks: Sequence[str] = (),
    tokenizer=None,
    train_format: str = AUTO,
    fewshot: int = 0,
) -> TrainingData:
    """``rows`` as the defender's task shows them (see the module's doc).

    Args:
        evaluator: the run's :class:`~.evaluation.harness.Evaluator` (its loaded tasks and chat setting); None: fixed.
        tasks: the defender's tasks, in the order they are tried.
        tokenizer: renders the chat template when ``evaluator`` scores with one.

    Raises:
        TrainDataError: a row the chosen task cannot read, or rows neither a task nor the fixed formatting reads.
        ConfigError: ``train_format`` names no task of ``tasks``; ``fewshot`` without a task that reads the rows.
    """
    from .evaluation.formatting import UnreadableRow, format_for_task, processed

    chat = bool(evaluator is not None and evaluator.chat_template)
    if train_format not in (AUTO, FIXED) and train_format not in tasks:
        raise ConfigError(
            f"--train-format {train_format} is neither auto, fixed, nor one of --tasks ({', '.join(tasks)}).",
            "Name the task whose prompt format the rows should take, or use auto.",
        )
    if train_format == FIXED and fewshot:
        raise ConfigError(
            f"--train-fewshot {fewshot} with --train-format fixed: the fixed formatting has no few-shot examples.",
            "Use --train-format auto (or a task name) for few-shot prompts, or leave --train-fewshot at 0.",
        )
    candidates = [] if evaluator is None else [train_format] if train_format not in (AUTO, FIXED) else list(tasks)
    fields = [row.fields for row in rows]
    failures = {}
    for task in candidates:
        loaded = evaluator.task_object(task)
        if loaded is None:  # a code task: its prompts are built in the sandboxed child only
            failures[task] = None
            continue
        try:
            examples = format_for_task(loaded, processed(loaded, fields), tokenizer=tokenizer, chat=chat, num_fewshot=fewshot)
        except UnreadableRow as exc:
            failures[task] = exc
            continue
        where = [row.where for row in rows]
        if len(examples) != len(rows):  # the task's process_docs dropped or split rows
            where = [f"row {i} after {task}'s process_docs" for i in range(len(examples))]
        shots = f", {fewshot} few-shot examples before each" if fewshot else ""
        description = (
            f"formatted by task {task} as evaluation shows it (description, doc_to_text, target_delimiter, doc_to_target"
            f"{shots}{', chat template' if chat else ''})"
        )
        if train_format == FIXED:  # the task reads them, but the user asked for the fixed formatting
            return _fixed(rows, tokenizer, chat, in_task_format=examples, task=task)
        return TrainingData(examples, where, f"task {task}", description)
    named = train_format not in (AUTO, FIXED)
    if named and failures.get(train_format, "") is None:
        raise ConfigError(
            f"--train-format {train_format}: a code task's prompts are built in the sandboxed child, not here.",
            "Use --train-format auto or fixed (write the rows as prompt/completion in the task's format).",
        )
    # A task that reads some rows but not all (or the task the user named) is a broken file, not another format.
    broken = [(task, exc) for task, exc in failures.items() if exc is not None and (named or exc.index > 0)]
    if broken:
        task, exc = broken[0]
        raise TrainDataError(
            f"{rows[min(exc.index, len(rows) - 1)].where}: task {task} cannot format this row ({exc.reason})"
            + (f", though it reads the {exc.index} before it." if exc.index else "."),
            f"Give every row the fields {task}'s template reads, or pass --train-format fixed to use the rows' "
            "prompt/completion as they are.",
        )
    if fewshot:
        raise ConfigError(
            f"--train-fewshot {fewshot}: no task of --tasks reads these rows, so there are no few-shot examples to put before them.",
            "Give the rows the fields the task's template reads, or leave --train-fewshot at 0.",
        )
    data = _fixed(rows, tokenizer, chat)
    if evaluator is not None and train_format == AUTO:
        tried = ", ".join(t for t in failures) or "none"
        log.warning(
            "Training data: no task of --tasks (%s) reads these rows' fields (%s); they are %s. If the task shows the model "
            "another prompt format, give the rows its fields, or write them as prompt/completion in its format.",
            tried,
            ", ".join(sorted(rows[0].fields)),
            data.description,
        )
    return data


def _columns(fields: dict) -> str:
    """Which of the fixed formatting's column sets a row uses (the first that fits, as :func:`fixed_example` reads it)."""
    for columns in COLUMN_SETS:
        if all(isinstance(fields.get(c), str) for c in columns):
            return "/".join(columns)
    return "none"


def _fixed(rows: Sequence[Row], tokenizer, chat: bool, *, in_task_format=None, task: str | None = None) -> TrainingData:
    from .evaluation.chat import as_chat

    examples = [fixed_example(row) for row in rows]
    kinds = {_columns(row.fields) for row in rows}
    description = "in the fixed formatting (" + ", ".join(sorted(kinds)) + ")"
    if "question/answer" in kinds:
        description = description[:-1] + ': "Question: <question>\\nAnswer: <answer>", lm-eval\'s gsm8k prompt)'
    if chat:
        examples = as_chat(tokenizer, examples)
        description += " in the chat template"
    if task:
        description += f"; task {task} reads them too (--train-format auto formats them as it does)"
    return TrainingData(examples, [row.where for row in rows], FIXED, description, in_task_format=in_task_format)


# lm-eval's dataset_path values that read local files, not a Hub dataset.
LOCAL_DATASET_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow"})


def hub_datasets(train_data: str | None, tasks, evaluator) -> list[str]:
    """The Hub datasets a run read, for the card's ``datasets``: ``train_data`` when it names a Hub dataset (``name`` or
    ``name:config``), then each task's ``dataset_path`` (a code task, loaded only in its sandboxed child, and a task on
    local files give none)."""
    from .io.hub import looks_like_repo_id

    found = []
    if train_data and not is_local_file(train_data):
        found.append(str(train_data).partition(":")[0])  # name:config, as _read_hub_dataset reads it
    for task in tasks:
        loaded = evaluator.task_object(task)
        path = getattr(getattr(loaded, "config", None), "dataset_path", None)
        if isinstance(path, str) and path not in LOCAL_DATASET_BUILDERS and looks_like_repo_id(path) and not Path(path).exists():
            found.append(path)
    return list(dict.fromkeys(found))
