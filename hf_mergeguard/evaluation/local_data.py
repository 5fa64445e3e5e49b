"""Built-in lm-eval tasks on local copies of their data: ``--task-data gsm8k=PATH``.

The task's own definition (prompt, few-shot examples, filters, metric) is kept; only where its rows come from
changes, through lm-eval's ``dataset_path: json|parquet`` and ``dataset_kwargs: {data_files: ...}``, so a release
runner with no access to the Hub scores the same GSM8K or HumanEval as ``lm_eval --tasks gsm8k`` does.

PATH is either

* a file (``.jsonl``, ``.json`` or ``.parquet``) of the split the task is scored on (GSM8K's and HumanEval's
  ``test``), enough for tasks that draw no few-shot examples from another split; or
* a folder of split files named as the Hub names them: ``test.jsonl``, ``train.jsonl``, or the Hub's own layout
  (``hf download openai/gsm8k --repo-type dataset --local-dir gsm8k`` writes ``main/test-00000-of-00001.parquet``;
  the task's ``dataset_name``, e.g. GSM8K's ``main``, picks the subfolder).

Rows stay in the dataset's own format (GSM8K: ``question``/``answer``; HumanEval: ``task_id``, ``prompt``,
``canonical_solution``, ``test``, ``entry_point``); a file whose rows lack a column the task's prompt reads is refused
before any work, naming the column.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ConfigError

log = logging.getLogger(__name__)
# File suffix -> the ``datasets`` builder that reads it.
SUFFIX_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")
HOW_TO_GET = "e.g. hf download DATASET --repo-type dataset --local-dir DIR, where the Hub can be reached"


def how_to_get(config: Mapping) -> str:
    """Where the task's rows come from, as a download command (its ``dataset_path`` on the Hub)."""
    dataset = config.get("dataset_path")
    if not isinstance(dataset, str) or "/" not in dataset:
        return HOW_TO_GET
    return f"e.g. hf download {dataset} --repo-type dataset --local-dir {dataset.split('/')[-1]}, where the Hub can be reached"


def parse_task_data(entries: Sequence[str] | Mapping[str, str] | None) -> dict[str, Path]:
    """``["gsm8k=PATH", ...]`` (or a mapping) as {task: absolute path}, each path checked to exist."""
    if not entries:
        return {}
    pairs = list(entries.items()) if isinstance(entries, Mapping) else [_split_entry(e) for e in entries]
    found: dict[str, Path] = {}
    for task, path in pairs:
        if task in found:
            raise ConfigError(f"--task-data gives task {task} twice.", "Give each task's data once.")
        location = Path(path).expanduser().resolve()
        if not location.exists():
            raise ConfigError(
                f"--task-data {task}={path}: {location} does not exist.", f"Give the file or folder of {task}'s rows ({HOW_TO_GET})."
            )
        found[task] = location
    return found


def task_data_identity(task_data: Mapping[str, Path]) -> dict[str, list]:
    """``--task-data`` as a run records it: each task's data files (the file, or those under the folder) with their sizes
    and modification times, so that rows edited in place are scored again (work folders, finished self-tests and cached
    scores are keyed by it)."""
    identity = {}
    for task, path in sorted(task_data.items()):
        files = [path] if path.is_file() else _data_files_under(path)
        identity[task] = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return identity


def _data_files_under(folder: Path) -> list[Path]:
    """The row files under ``folder``, hidden folders skipped (``hf download --local-dir`` keeps its records in .cache/)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIX_BUILDERS and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _split_entry(entry: str) -> tuple[str, str]:
    task, sep, path = str(entry).partition("=")
    if not sep or not task.strip() or not path.strip():
        raise ConfigError(
            f"--task-data {entry!r} is not TASK=PATH.", "e.g. --task-data gsm8k=data/gsm8k (a folder of split files) or gsm8k=test.jsonl"
        )
    return task.strip(), path.strip()


@dataclass(frozen=True)
class LocalTaskData:
    """Where one task's rows come from: the ``datasets`` builder and the files of each split."""

    task: str
    builder: str
    data_files: dict[str, list[str]]
    dropped_splits: tuple[str, ...]  # the task's split settings with no local file (set to none: lm-eval skips them)

    def overrides(self) -> dict:
        """The task-config keys that point lm-eval at the files (JSON: the code-task child receives them as they are)."""
        unset = {key: None for key in self.dropped_splits}
        return {"dataset_path": self.builder, "dataset_name": None, "dataset_kwargs": {"data_files": self.data_files}, **unset}


def local_task_data(task: str, location: Path, config: Mapping) -> LocalTaskData:
    """Check that ``location`` holds the splits ``task`` (its raw lm-eval ``config``) needs, in its format."""
    if config.get("custom_dataset"):
        raise ConfigError(f"lm-eval task {task} builds its dataset in Python (custom_dataset): --task-data cannot give it files.")
    eval_split = config.get("test_split") or config.get("validation_split")
    if not eval_split:
        raise ConfigError(f"lm-eval task {task} names no test or validation split, so --task-data cannot say which rows it scores.")
    named = {key: config.get(key) for key in SPLIT_KEYS if config.get(key)}
    if location.is_file():
        _builder_of(location, task)
        files = {eval_split: [str(location)]}
    else:
        files = _split_files(location, sorted(set(named.values())), config.get("dataset_name"), task)
        if eval_split not in files:
            found = ", ".join(sorted(files)) or "none"
            raise ConfigError(
                f"--task-data {task}={location}: no file of the {eval_split!r} split, which {task} is scored on (splits found: {found}).",
                f"Name it {eval_split}.jsonl or {eval_split}.parquet (or {eval_split}-00000-of-00001.parquet as on the Hub).",
            )
    fewshot = _fewshot_split(config)
    if fewshot and fewshot != eval_split and fewshot not in files:
        raise ConfigError(
            f"--task-data {task}={location}: {task} draws its {config.get('num_fewshot')} few-shot examples from the "
            f"{fewshot!r} split, which is not there.",
            f"Give a folder holding {fewshot} and {eval_split} files ({how_to_get(config)}).",
        )
    builders = {_builder_of(Path(f), task) for paths in files.values() for f in paths}
    if len(builders) > 1:
        raise ConfigError(f"--task-data {task}={location} mixes JSON and parquet files.", "Keep one format per task.")
    for split, paths in files.items():
        _check_columns(task, Path(paths[0]), config, split == eval_split)
    dropped = tuple(key for key, split in named.items() if split not in files)
    if dropped:  # e.g. the training split: --train-format auto and the ftmerge attack read rows from it
        log.warning("--task-data %s: no local file of %s; %s runs without it.", task, ", ".join(f"{k} {named[k]!r}" for k in dropped), task)
    return LocalTaskData(task, builders.pop(), files, dropped)


def _fewshot_split(config: Mapping) -> str | None:
    """The split few-shot examples come from, or None when there are none or they are written in the config."""
    fewshot_config = config.get("fewshot_config") or {}
    if not config.get("num_fewshot") or fewshot_config.get("samples"):
        return None
    return config.get("fewshot_split") or config.get("training_split") or config.get("validation_split")


def _builder_of(path: Path, task: str) -> str:
    builder = SUFFIX_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ConfigError(f"--task-data {task}: {path.name} is not .jsonl, .json or .parquet.", "Give the rows as JSON lines or parquet.")
    return builder


def _split_files(folder: Path, splits: Sequence[str], dataset_name: str | None, task: str) -> dict[str, list[str]]:
    """Each split's files under ``folder`` (or its ``dataset_name`` subfolder, as the Hub lays out GSM8K's ``main``)."""
    root = folder / dataset_name if dataset_name and (folder / dataset_name).is_dir() else folder
    candidates = _data_files_under(root)
    found: dict[str, list[str]] = {}
    for split in splits:
        # SPLIT.jsonl, or the Hub's shards SPLIT-00000-of-00002.parquet: not test-old.jsonl beside them.
        pattern = re.compile(rf"{re.escape(split)}(-\d+-of-\d+)?\.(jsonl|json|parquet)", re.IGNORECASE)
        matches = [p for p in candidates if pattern.fullmatch(p.name)]
        folders = sorted({str(p.parent) for p in matches})
        if len(folders) > 1:
            raise ConfigError(
                f"--task-data {task}={folder}: the {split!r} split has files in several folders ({', '.join(folders)}).",
                "Point --task-data at the one folder (e.g. the dataset's configuration) that the task reads.",
            )
        if matches:
            found[split] = [str(p) for p in matches]
    return found


def _first_row(path: Path) -> dict:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        rows = table.read_row_group(0).slice(0, 1).to_pylist() if table.num_row_groups else []
    else:
        text = path.read_text(encoding="utf-8").lstrip()
        if text.startswith("["):
            rows = json.loads(text)[:1]
        else:
            line = next((line for line in text.splitlines() if line.strip()), None)
            rows = [json.loads(line)] if line else []
    if not rows or not isinstance(rows[0], dict):
        raise ConfigError(f"{path} holds no rows (JSON objects, one per line, or a parquet table).")
    return rows[0]


def rows_and_characters(paths: Sequence[Path]) -> tuple[int, int]:
    """How many rows the files hold, and their characters in all (JSON lines: the lines; parquet: the text columns)."""
    rows = characters = 0
    for path in paths:
        if path.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.compute as pc
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            rows += table.num_rows
            for column in table.columns:
                if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                    characters += int(pc.sum(pc.utf8_length(column)).as_py() or 0)
        else:
            text = path.read_text(encoding="utf-8")
            if text.lstrip().startswith("["):
                loaded = json.loads(text)
                rows, characters = rows + len(loaded), characters + len(text)
            else:
                lines = [line for line in text.splitlines() if line.strip()]
                rows, characters = rows + len(lines), characters + sum(len(line) for line in lines)
    return rows, characters


def _check_columns(task: str, path: Path, config: Mapping, scored: bool) -> None:
    """Render the task's prompt (and, for the scored split, its target) on the file's first row: a missing column is
    named here instead of deep inside lm-eval."""
    import jinja2

    try:
        row = _first_row(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--task-data {task}: {path} cannot be read: {exc}", "Give JSON lines or a parquet file.") from None
    if config.get("process_docs"):
        return  # the templates read the rows as process_docs makes them, not as stored: lm-eval checks those
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    for key in ("doc_to_text", "doc_to_target") if scored else ("doc_to_text",):
        template = config.get(key)
        if not isinstance(template, str) or "{{" not in template:
            continue  # a column name or a Python function: lm-eval's own error is clear enough
        try:
            environment.from_string(template).render(**row)
        except jinja2.UndefinedError as exc:
            raise ConfigError(
                f"--task-data {task}: the rows of {path.name} lack a column {task}'s {key} reads ({exc.message}); they have: "
                f"{', '.join(sorted(row))}.",
                f"Write the rows in the dataset's own format ({how_to_get(config)}).",
            ) from None
        except Exception:  # noqa: BLE001 - a template using lm-eval's own filters: leave it to lm-eval
            continue


def task_specs(manager, names: Sequence[str], local: Mapping[str, dict]) -> list:
    """lm-eval task specs for ``names``: the name itself, or, for a task on local data, its full configuration with
    ``local[name]`` (:meth:`LocalTaskData.overrides`) applied (lm-eval builds an inline configuration as given, so the
    task's YAML is loaded here, as its ``TaskManager`` would)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    specs: list = []
    for name in names:
        if name not in local:
            specs.append(name)
            continue
        entry = manager.task_index[name]
        if entry.yaml_path is None:
            raise ConfigError(f"lm-eval task {name} is defined in Python, not YAML; --task-data reads YAML tasks only.")
        specs.append({**load_yaml(entry.yaml_path, resolve_func=True), **local[name]})
    return specs
