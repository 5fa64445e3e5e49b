"""Evaluation with lm-eval-harness: task catalog, in-process scoring, code tasks in a child process."""

from .harness import Evaluator, TaskScore, evaluate_model
from .model_files import load_tokenizer
from .sandbox import scrubbed_environment
from .tasks import KNOWN_TASK_FOLDERS, TaskCatalog, parse_tasks

__all__ = [
    "KNOWN_TASK_FOLDERS",
    "Evaluator",
    "TaskCatalog",
    "TaskScore",
    "evaluate_model",
    "load_tokenizer",
    "parse_tasks",
    "scrubbed_environment",
]
