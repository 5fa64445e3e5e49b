"""The defender's training data (``--train-data``): a local JSONL file or a Hub dataset.

Rows may be GSM8K-style ``question``/``answer`` (formatted as lm-eval's gsm8k prompt, ``"Question: ...\\n
Answer:"`` + ``" <answer>"``), ``prompt``/``completion`` (used as they are), or ``text`` (loss on all of it).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import OfflineError, TrainDataError
from .io.hub import looks_offline
from .training import Example

COLUMN_SETS = (("prompt", "completion"), ("question", "answer"), ("text",))


def example_from_row(row: dict, where: str) -> Example:
    if not isinstance(row, dict):
        raise TrainDataError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return Example(row["prompt"], row["completion"])
    if isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
        return Example(f"Question: {row['question']}\nAnswer:", f" {row['answer']}")
    if isinstance(row.get("text"), str):
        return Example("", row["text"])
    raise TrainDataError(
        f"{where}: no usable columns (found {sorted(row)}).",
        "Each row needs prompt+completion, question+answer (GSM8K style), or text.",
    )


def load_train_examples(spec: str | Path, *, split: str = "train", limit: int | None = None) -> list[Example]:
    """Read training examples from a JSONL file, or from a Hub dataset (``name`` or ``name:config``).

    Raises:
        TrainDataError: the file is missing, empty, malformed, or has no usable columns.
        OfflineError: a Hub dataset cannot be reached and is not cached.
    """
    path = Path(spec)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise TrainDataError(f"--train-data {path} does not exist.", "Pass a JSONL file or a Hub dataset name.")
        examples = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainDataError(
                    f"{path}:{number} is not valid JSON ({exc.msg}).", "Each line of a JSONL file must be one JSON object."
                ) from None
            examples.append(example_from_row(row, f"{path}:{number}"))
            if limit and len(examples) >= limit:
                break
        if not examples:
            raise TrainDataError(f"--train-data {path} is empty.", "Give at least one training example.")
        return examples
    return _load_hub_dataset(str(spec), split, limit)


def _load_hub_dataset(name: str, split: str, limit: int | None) -> list[Example]:
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
    examples = [example_from_row(dict(row), f"{name}[{i}]") for i, row in enumerate(rows)]
    if not examples:
        raise TrainDataError(f"Dataset {name} split {split} is empty.")
    return examples
