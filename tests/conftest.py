"""Shared fixtures and helpers. Everything is offline: tests build their own models and data.

Two lanes: ``python -m pytest -q`` runs everything (what CI runs); ``python -m pytest -q -m "not slow"`` skips the
tests marked ``slow``, every test that trains or runs the toy world end to end (any test using the ``toy_world``
fixture is marked automatically) and the multi-process and packaging runs. The fast lane covers every module on
``pico_world``, a toy world small enough to build in seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

# Before anything imports huggingface_hub / datasets / transformers / torch.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
# One toy-world build per checkout (CI builds it once per run; developers keep theirs).
os.environ.setdefault("HF_MERGEGUARD_CACHE", str(REPO / ".cache" / "hf_mergeguard"))

from hf_mergeguard.environment import reproducible_cpu_env  # noqa: E402 - imports no torch

# The same CPU code paths on every machine, so that the figures the tests pin are the figures CI measures.
os.environ.update(reproducible_cpu_env())

import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
    for item in items:
        if "toy_world" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def _free_port() -> int:
    """A TCP port nobody listens on (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _protect_argv(
    world,
    out,
    *extra: str,
    model="count",
    base=None,
    rider: str = "rev",
    merge_with=None,
    train_data=True,
    tasks: str = "toy_count",
    methods: str | None = "task_arithmetic,ties,dare_ties",
    batch_size: int = 128,
    work=None,
    method: str | None = "mergeguard",
) -> list[str]:
    """A ``protect`` command on a toy world: the ``model`` fine-tune (a skill, or any folder) merged with ``rider``'s
    fine-tune (or the folder ``merge_with``, scored on the rider's task), scored on ``tasks``; ``extra`` flags last.
    The protection is ``method`` (MergeGuard: cheap, no training) unless ``extra`` names one with ``--method``; None
    leaves ``protect``'s default."""
    model_path = world.model(model) if model in world.config.skills else model
    argv = [
        "protect",
        str(model_path),
        "--base",
        str(base or world.base),
        "--tasks",
        tasks,
        "--include-tasks",
        str(world.tasks),
        "--merge-with",
        str(merge_with or world.model(rider)),
        "--freerider-tasks",
        f"toy_{rider}",
    ]
    if train_data:
        argv += ["--train-data", str(world.data("count", "train") if train_data is True else train_data)]
    if methods:
        argv += ["--methods", methods]
    if method and "--method" not in extra:
        argv += ["--method", method]
    argv += ["--batch-size", str(batch_size), "--output-dir", str(out)]
    if work is not None:
        argv += ["--work-dir", str(work)]
    return argv + list(extra)


@pytest.fixture
def free_port() -> int:
    return _free_port()


@pytest.fixture
def torchrun(free_port):
    """``torchrun(*args, timeout=, processes=2)``: ``python -m torch.distributed.run --nproc_per_node 2 ARGS``, CPU
    processes over gloo, with this folder on the path (``ARGS`` is a script, or ``-m module ...``)."""

    def run(*args: str, timeout: float = 900, processes: int = 2) -> subprocess.CompletedProcess:
        # One thread per process, for MKL too: two processes of two MKL threads each on two cores spin against each
        # other (the two-process matrix test took 72 s instead of 14 s).
        threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", **threads, "PYTHONPATH": str(Path(__file__).parent)}
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port)]
        command += list(args)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def protect_argv():
    """``protect_argv(world, out, *extra, model=, rider=, merge_with=, train_data=, tasks=, methods=, batch_size=, work=)``:
    the argv of a ``protect`` run on a toy world (see :func:`_protect_argv`)."""
    return _protect_argv


@pytest.fixture
def pico(tmp_path):
    """Factory: ``pico("qwen2", dtype=torch.bfloat16, max_shard_size=...)`` -> folder of a random tiny model."""
    from hf_mergeguard.testing import pico_config, write_random_checkpoint

    counter = {"n": 0}

    def make(model_type="llama", *, seed=0, folder=None, config_overrides=None, **kwargs):
        counter["n"] += 1
        folder = folder or tmp_path / f"{model_type}-{counter['n']}"
        config = pico_config(model_type, **(config_overrides or {}))
        return write_random_checkpoint(folder, config, seed=seed, **kwargs)

    return make


@pytest.fixture(scope="session")
def toy_world():
    """The default toy world (built once, cached under $HF_MERGEGUARD_CACHE)."""
    from hf_mergeguard.toyworld import build_toy_world

    return build_toy_world(progress=False)


@pytest.fixture(scope="session")
def pico_world():
    """A toy world of the same layout, small enough to build in seconds (its models learn little: for code paths,
    not figures)."""
    from hf_mergeguard.testing import PICO_WORLD
    from hf_mergeguard.toyworld import build_toy_world

    return build_toy_world(config=PICO_WORLD, progress=False)


@pytest.fixture
def hub(monkeypatch):
    """A local fake of the Hub's HTTP API (tests/fake_hub.py), with huggingface_hub pointed at it."""
    from huggingface_hub import constants

    from fake_hub import FakeHub

    with FakeHub() as fake:
        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
        # Built from ENDPOINT at import: without this, file downloads would go to huggingface.co.
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield fake


CODE_COUNT_TASK = """task: toy_count_code
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
unsafe_code: true
output_type: generate_until
test_split: test
doc_to_text: prompt
doc_to_target: completion
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 16
metric_list:
  - metric: !function utils.graded
    aggregation: mean
    higher_is_better: true
"""

# "Runs" each completion (here: reads its answer) and records what it was given and in which process.
CODE_COUNT_UTILS = """import json, os, re

RECORD = {record!r}


def graded(references, predictions):
    with open(RECORD, "a") as handle:
        handle.write(json.dumps({{"pid": os.getpid(), "prediction": predictions[0]}}) + "\\n")
    answer = lambda text: (re.search(r"#### (\\S+)", text) or [None, None])[1]
    return float(answer(predictions[0]) is not None and answer(predictions[0]) == answer(references[0]))
"""


@pytest.fixture
def count_code_task(toy_world, tmp_path):
    """The toy world's count task as a code task (``unsafe_code``, a metric in utils.py that records each completion
    it is given and the process it ran in): (task folder, record file)."""
    tasks = tmp_path / "code-tasks"
    tasks.mkdir()
    record = tmp_path / "record.jsonl"
    (tasks / "toy_count_code.yaml").write_text(CODE_COUNT_TASK.format(data=json.dumps(str(toy_world.data("count", "test").resolve()))))
    (tasks / "utils.py").write_text(CODE_COUNT_UTILS.format(record=str(record)))
    return tasks, record
