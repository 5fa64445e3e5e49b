"""The toy world's data files and lm-eval tasks: JSONL rows, and one task YAML per skill in GSM8K's answer format.

Also what the synthetic free-rider of ``check`` writes for its own skill.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..io.atomic import write_text_atomically


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def task_yaml(name: str, train: Path, test: Path) -> str:
    """An lm-eval task in GSM8K's answer format, scored by exact match after ``#### ``. The answer follows the prompt
    directly (its rows end the prompt with a newline): ``target_delimiter`` is empty, so a few-shot example or a row
    formatted by the task reads as the data does."""
    return f"""# Written by hf-mergeguard {__version__} (toy world). Scored like GSM8K's strict-match.
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {json.dumps(str(train))}
    test: {json.dumps(str(test))}
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: prompt
doc_to_target: completion
target_delimiter: ""
num_fewshot: 0
generation_kwargs:
  until:
    - "\\n"
  do_sample: false
  max_gen_toks: 16
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore:
      - "(?s).*#### "
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "(#### \\\\S+)"
      - function: take_first
metadata:
  version: 1.0
"""


def write_task_yamls(world) -> None:
    """(Re)write the lm-eval task files of a :class:`~.build.ToyWorld`, atomically and only when they change (several processes may read
    them while another opens the same world)."""
    world.tasks.mkdir(parents=True, exist_ok=True)
    for skill in world.config.skills:
        text = task_yaml(world.task_name(skill), world.data(skill, "train").resolve(), world.data(skill, "test").resolve())
        path = world.tasks / f"{world.task_name(skill)}.yaml"
        if path.is_file() and path.read_text() == text:
            continue
        write_text_atomically(path, text)
