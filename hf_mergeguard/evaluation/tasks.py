"""Which lm-eval tasks exist, where their YAML lives, and which execute model-written code.

lm-eval's full task scan takes ~11 s; when every asked task is a known one (GSM8K, HumanEval, MBPP
variants) or lives in an ``--include-tasks`` folder, only those folders are indexed (~0 s).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import CodeEvalNotAllowedError, ConfigError, UnknownTaskError
from .local_data import LocalTaskData, local_task_data, task_specs

# Task name -> folder under lm_eval/tasks (the cheap index). Anything else triggers the full scan.
KNOWN_TASK_FOLDERS = {
    "gsm8k": "gsm8k",
    "gsm8k_cot": "gsm8k",
    "gsm8k_cot_zeroshot": "gsm8k",
    "gsm8k_cot_llama": "gsm8k",
    "gsm8k_cot_self_consistency": "gsm8k",
    "humaneval": "humaneval",
    "humaneval_64": "humaneval",
    "humaneval_instruct": "humaneval",
    "humaneval_64_instruct": "humaneval",
    "humaneval_plus": "humaneval",
    "mbpp": "mbpp",
    "mbpp_plus": "mbpp",
    "arc_easy": "arc",
    "arc_challenge": "arc",
}


def _builtin_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


@dataclass
class TaskCatalog:
    """The lm-eval ``TaskManager`` for a set of task names, validated.

    Args:
        names: the task names asked for.
        include_paths: folders of extra task YAMLs (lm-eval's ``include_path``).
        task_data: {task: file or folder} of tasks whose rows are read from local files (:mod:`.local_data`).
    """

    names: list[str]
    include_paths: list[Path]
    task_data: Mapping[str, Path] = field(default_factory=dict)

    def __post_init__(self):
        self.include_paths = [Path(p).resolve() for p in self.include_paths]
        for folder in self.include_paths:
            if not folder.is_dir():
                raise ConfigError(f"--include-tasks folder {folder} does not exist.")
        if not self.names:
            raise ConfigError("No tasks given.", "Pass --tasks, e.g. --tasks gsm8k or --tasks toy_count.")
        local = task_manager([str(p) for p in self.include_paths], False) if self.include_paths else None
        local_names = set(local.all_tasks) if local else set()
        wanted = [n for n in self.names if n not in local_names]
        if all(n in KNOWN_TASK_FOLDERS for n in wanted):
            folders = sorted({str(_builtin_tasks_dir() / KNOWN_TASK_FOLDERS[n]) for n in wanted})
            self.index_paths, self.include_defaults = folders + [str(p) for p in self.include_paths], False
        else:
            # Some task is not in the cheap index: scan everything lm-eval ships (~11 s).
            self.index_paths, self.include_defaults = [str(p) for p in self.include_paths], True
        self.manager = task_manager(self.index_paths, self.include_defaults)
        unknown = [n for n in self.names if n not in self.manager.all_tasks]
        if unknown:
            raise UnknownTaskError(
                "lm-eval task",
                unknown[0],
                self.manager.all_tasks,
                hint="Check the spelling (lm-eval --tasks list shows every task), or add the folder that defines it with --include-tasks.",
            )
        strangers = [t for t in self.task_data if t not in self.names]
        if strangers:
            raise ConfigError(
                f"--task-data gives rows for {strangers[0]}, which is not among the tasks ({', '.join(self.names)}).",
                "Add it to --tasks or drop its --task-data.",
            )
        for task in self.task_data:
            kind = self.manager.task_index[task].kind.name
            if kind != "TASK":  # a group or tag stands for several tasks; a Python task has no YAML to point at files
                what = "defined in Python" if kind == "PY_TASK" else f"a {kind.lower()} of tasks, not one task"
                raise ConfigError(f"--task-data {task}: {task} is {what}.", "Give --task-data for each YAML task it stands for.")
        self.local: dict[str, LocalTaskData] = {t: local_task_data(t, Path(p), self.config_of(t)) for t, p in self.task_data.items()}

    def specs(self, names: Sequence[str]) -> list:
        """What lm-eval loads for ``names``: a name, or a task on local files as its full configuration."""
        return task_specs(self.manager, names, self.local_overrides())

    def local_overrides(self) -> dict[str, dict]:
        return {task: data.overrides() for task, data in self.local.items()}

    def config_of(self, name: str) -> dict:
        entry = self.manager.task_index.get(name)
        return dict(entry.cfg or {}) if entry is not None else {}

    def runs_code(self, name: str) -> bool:
        """The task executes model-written code (lm-eval's ``unsafe_code``, e.g. HumanEval)."""
        return bool(self.config_of(name).get("unsafe_code", False))

    def code_tasks(self) -> list[str]:
        return [n for n in self.names if self.runs_code(n)]

    def require_code_permission(self, allow_code_eval: bool) -> None:
        code = self.code_tasks()
        if code and not allow_code_eval:
            raise CodeEvalNotAllowedError(
                f"Task(s) {', '.join(code)} execute code written by the model, which can do anything your user account can.",
                "Pass --allow-code-eval to run them (in a child process with no Hub token in its "
                "environment and a time limit), ideally inside a container or VM.",
            )


def task_manager(include_paths: Sequence[str], include_defaults: bool):
    """An lm-eval ``TaskManager`` over ``include_paths`` (and every built-in task with ``include_defaults``: ~11 s),
    made once per process for the same folders with the same files."""
    found = (f for folder in include_paths for f in Path(folder).rglob("*") if f.is_file())
    files = tuple(sorted((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in found))
    return _task_manager(tuple(include_paths), include_defaults, files)


@functools.lru_cache(maxsize=16)
def _task_manager(include_paths: tuple[str, ...], include_defaults: bool, files: tuple):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None, include_defaults=include_defaults)


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    return [t.strip() for t in tasks if t.strip()]
