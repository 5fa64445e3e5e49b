"""Scoring models with lm-eval 0.4, in-process (``HFLM(pretrained=model_object)``), so a merged model is
scored without writing it to disk. Tasks that execute model-written code are generated here and executed in a
sandboxed child process (:mod:`.code_child`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ConfigError, MergeGuardError, OfflineError
from ..io.hub import looks_offline
from .backends import check_backend, vllm_model
from .local_data import parse_task_data
from .quiet import datasets_quiet, quiet_hflm_class, quiet_lm_eval
from .sampling import DEGENERATE_PROBE, is_degenerate, only_tasks, subsample, subsamples, summed
from .sandbox import copy_code_eval_metric, run_with_time_limit, scrubbed_environment
from .tasks import TaskCatalog, parse_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskScore:
    """One task's primary metric (a share in [0, 1])."""

    task: str
    metric: str
    value: float
    stderr: float | None
    samples: int
    degenerate: bool = False  # scored on the first prompts only: every output was empty or a repetition

    @property
    def points(self) -> float:
        return 100.0 * self.value

    def after(self, earlier: TaskScore) -> TaskScore:
        """This score over more prompts of the same task, combined with ``earlier``'s (a mean over all of them)."""
        total = self.samples + earlier.samples
        value = (summed(self.value, self.samples) + summed(earlier.value, earlier.samples)) / total if total else self.value
        return TaskScore(self.task, self.metric, value, None, total)

    def to_dict(self) -> dict:
        return asdict(self)


def _primary_metric(task: str, results: dict, config: dict) -> tuple[str, float, float | None]:
    """The task's first metric under its first filter (e.g. GSM8K's ``exact_match,strict-match``)."""
    keys = [k for k in results if k != "alias" and "_stderr" not in k and "," in k]
    if not keys:
        raise MergeGuardError(
            f"lm-eval returned no metric for task {task}.", "Give the task's YAML a metric_list (lm-eval scores nothing without one)."
        )
    preferred = None
    metrics = config.get("metric_list") or []
    filters = [f.get("name") for f in (config.get("filter_list") or [])] or ["none"]
    if metrics and isinstance(metrics[0].get("metric"), str):
        preferred = f"{metrics[0]['metric']},{filters[0]}"
    key = preferred if preferred in results else keys[0]
    name, filter_name = key.split(",", 1)
    stderr = results.get(f"{name}_stderr,{filter_name}")
    stderr = float(stderr) if isinstance(stderr, (int, float)) else None
    return key, float(results[key]), stderr


class Evaluator:
    """Scores models on a fixed set of lm-eval tasks; build it once, call :meth:`evaluate` many times.

    Args:
        tasks: task names (``"gsm8k,humaneval"`` or a list).
        include_tasks: folders of extra task YAMLs (e.g. the toy world's ``tasks/``).
        task_data: ``{task: file or folder}``, or ``["task=PATH", ...]``: tasks (e.g. ``gsm8k``, ``humaneval``) whose rows
            are read from local files in the dataset's own format, with lm-eval's task definition (:mod:`.local_data`).
        limit: examples per task, a seeded random subset (:func:`subsample`; ``None``: all).
        batch_size: fixed generation batch size (greedy scores can shift with padding: keep it fixed).
        allow_code_eval: allow tasks that execute model-written code (HumanEval, MBPP).
        code_timeout: seconds the code-executing child may run.
        bootstrap_iters: lm-eval's bootstrap for standard errors (0: off).
        chat_template: score with the tokenizer's chat template, few-shot examples as turns (lm-eval's
            ``apply_chat_template`` and ``fewshot_as_multiturn``; see :func:`.chat.use_chat_template`).
        degenerate_probe: score this many prompts of each generation task first; a task whose outputs there are all
            empty or a repetition is scored on them alone (``TaskScore.degenerate``), the rest is not generated.
            0: off.
        eval_backend: ``hf`` or ``vllm`` (:mod:`.backends`; code tasks always score with ``hf``).
    """

    def __init__(
        self,
        tasks: str | Sequence[str],
        *,
        include_tasks: Sequence[str | os.PathLike] = (),
        task_data: Mapping[str, str | os.PathLike] | Sequence[str] | None = None,
        limit: int | None = None,
        batch_size: int = 32,
        allow_code_eval: bool = False,
        code_timeout: float = 3600.0,
        bootstrap_iters: int = 0,
        chat_template: bool = False,
        degenerate_probe: int = DEGENERATE_PROBE,
        eval_backend: str = "hf",
    ):
        check_backend(eval_backend)
        self.catalog = TaskCatalog(parse_tasks(tasks), [Path(p) for p in include_tasks], parse_task_data(task_data))
        self.include_tasks = [str(p) for p in include_tasks]  # as given (the report records them)
        self.catalog.require_code_permission(allow_code_eval)
        self.limit = limit
        self.batch_size = batch_size
        self.code_timeout = code_timeout
        self.bootstrap_iters = bootstrap_iters
        self.chat_template = chat_template
        self.degenerate_probe = degenerate_probe
        self.eval_backend = eval_backend
        self.generation_config = None  # a transformers GenerationConfig every scored model gets (see evaluate)
        self.code_tasks = self.catalog.code_tasks()
        self.plain_tasks = [t for t in self.catalog.names if t not in self.code_tasks]
        self._task_dict = None
        self._code_requests_by_documents: dict[str, list] = {}

    @property
    def tasks(self) -> list[str]:
        return list(self.catalog.names)

    def _load_tasks(self):
        if self._task_dict is None:
            try:
                with datasets_quiet():
                    self._task_dict = self.catalog.manager.load(self.catalog.specs(self.plain_tasks))
            except Exception as exc:  # noqa: BLE001 - dataset download failures come in many types
                text = f"{type(exc).__name__}: {exc}"
                if looks_offline(text):
                    raise OfflineError(
                        f"The data of task(s) {', '.join(self.plain_tasks)} could not be loaded: {text[:300]}",
                        "Run once with network access so the datasets land in the HF cache, or give local copies of "
                        "the rows with --task-data TASK=PATH (e.g. gsm8k=data/gsm8k).",
                    ) from exc
                raise
        return self._task_dict

    def restricted_to(self, tasks: Sequence[str]) -> Evaluator:
        """The same evaluator on a subset of its tasks (the task index is shared: no second lm-eval scan)."""
        unknown = [t for t in tasks if t not in self.catalog.names]
        if unknown:
            raise ConfigError(f"Task(s) {', '.join(unknown)} are not among this evaluator's tasks.")
        subset = copy.copy(self)
        subset.catalog = copy.copy(self.catalog)
        subset.catalog.names = [t for t in self.catalog.names if t in tasks]
        subset.code_tasks = [t for t in self.code_tasks if t in tasks]
        subset.plain_tasks = [t for t in self.plain_tasks if t in tasks]
        subset._task_dict = None
        subset._code_requests_by_documents = {}
        return subset

    def task_object(self, task: str):
        """lm-eval's loaded task ``task`` (its few-shot sampler seeded as for scoring), or None for a code task (those
        are loaded in the sandboxed child only)."""
        if task not in self.plain_tasks:
            return None
        loaded = self._load_tasks()["tasks"][task]
        seed_like_simple_evaluate([loaded])
        return loaded

    def training_examples(self, task: str, limit: int, tokenizer=None) -> list:
        """Up to ``limit`` rows of ``task``'s training split as the task shows them; [] when the task has no training
        split (or runs code in the sandbox)."""
        from .formatting import training_split_examples

        loaded = self.task_object(task)
        return [] if loaded is None else training_split_examples(loaded, limit, tokenizer=tokenizer, chat=self.chat_template)

    def documents(self) -> list[dict]:
        """The (prompt, reference answer) pairs an evaluation generates for, over every in-process task (token counts)."""
        rows = []
        for name, task in self._load_tasks()["tasks"].items():
            docs = list(task.eval_docs)
            indices = subsample(name, len(docs), self.limit)
            for doc in docs if indices is None else [docs[i] for i in indices]:
                target = task.doc_to_target(doc)
                rows.append({"prompt": str(task.doc_to_text(doc)), "completion": target if isinstance(target, str) else str(target)})
        return rows

    def evaluate(self, model, tokenizer, samples: dict[str, list[int]] | None = None) -> dict[str, TaskScore]:
        """Score an in-memory ``transformers`` model on every task (with :attr:`generation_config`, when set: the
        defender's ``generation_config.json``, e.g. the end-of-turn ids an instruct model stops at).

        ``samples``: the documents to score, by task (indices into each task's test split; the budgeted search scores
        a grid point on a part of them); default: ``--limit``'s subset, or all."""
        if self.generation_config is not None:
            model.generation_config = copy.deepcopy(self.generation_config)
        scores: dict[str, TaskScore] = {}
        if self.plain_tasks:
            scores.update(self._evaluate_in_process(model, tokenizer, samples))
        if self.code_tasks:
            scores.update(self._evaluate_code_tasks(model, tokenizer, samples))
        return {task: scores[task] for task in self.catalog.names}

    def document_indices(self, tokenizer=None) -> dict[str, list[int]]:
        """Each task's scored documents by default: ``--limit``'s seeded subset, or all. Code tasks are not loaded
        here (loading HumanEval runs its metric's self-check, which belongs in the sandboxed child): their documents are
        those of the requests the child builds (``tokenizer``: needed with ``--chat-template``)."""
        tasks = self._load_tasks()["tasks"] if self.plain_tasks else {}
        chosen = {}
        for name, task in tasks.items():
            size = len(task.eval_docs)
            chosen[name] = subsample(name, size, self.limit) or list(range(size))
        if self.code_tasks:
            for _, _, _, task, document in self._code_requests(None, tokenizer):
                chosen.setdefault(task, []).append(document)
            chosen = {task: sorted(set(documents)) for task, documents in chosen.items()}
        return chosen

    def _evaluate_in_process(self, model, tokenizer, samples=None) -> dict[str, TaskScore]:
        task_dict = self._load_tasks()
        tasks = task_dict["tasks"]
        chosen = {t: samples[t] for t in self.plain_tasks} if samples else subsamples(tasks, self.limit)
        chosen = chosen or {t: list(range(len(task.eval_docs))) for t, task in tasks.items()}
        probe = self.degenerate_probe
        probed = [t for t in chosen if probe and tasks[t].OUTPUT_TYPE == "generate_until" and len(chosen[t]) > probe]
        if not probed or task_dict.get("groups"):
            return self._scores_from(self._run(model, tokenizer, task_dict, chosen))
        # A broken merge generates to the token cap on every prompt: score the first few prompts of each generation
        # task first, and stop there for a task whose outputs are all empty or a repetition.
        first = self._run(model, tokenizer, only_tasks(task_dict, probed), {t: chosen[t][:probe] for t in probed}, log_samples=True)
        degenerate = [t for t in probed if all(is_degenerate(s) for s in first["samples"][t])]
        rest = {t: chosen[t][probe:] if t in probed else chosen[t] for t in chosen if t not in degenerate}
        scores = self._scores_from(first)
        if rest:
            later = self._scores_from(self._run(model, tokenizer, only_tasks(task_dict, list(rest)), rest))
            for task, score in later.items():
                scores[task] = score.after(scores[task]) if task in scores else score
        for task in degenerate:
            scores[task] = dataclasses.replace(scores[task], degenerate=True)
        return scores

    @contextlib.contextmanager
    def _lm(self, model, tokenizer):
        """lm-eval's model for ``model``: HFLM on the model in memory, or vLLM (see :mod:`.backends`)."""
        if self.eval_backend == "vllm":
            with vllm_model(model, tokenizer, batch_size=self.batch_size, seed=FEWSHOT_SEED) as lm:
                yield lm
        else:
            yield quiet_hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)

    def _run(self, model, tokenizer, task_dict, samples, *, log_samples: bool = False) -> dict:
        from accelerate.utils import patch_environment
        from lm_eval.evaluator import evaluate as lm_evaluate

        seed_like_simple_evaluate(task_dict["tasks"].values())
        # lm-eval returns results only where LOCAL_RANK is 0; under accelerate each process scores its own
        # models, so every process is "rank 0" for lm-eval.
        with patch_environment(local_rank="0"), quiet_lm_eval(), self._lm(model, tokenizer) as lm:
            return lm_evaluate(
                lm,
                task_dict,
                samples=samples,
                bootstrap_iters=self.bootstrap_iters,
                log_samples=log_samples,
                apply_chat_template=self.chat_template,
                fewshot_as_multiturn=self.chat_template,
            )

    def _scores_from(self, results: dict) -> dict[str, TaskScore]:
        scores = {}
        for task in results["results"]:
            if task not in self.catalog.names:
                continue
            metric, value, stderr = _primary_metric(task, results["results"][task], self.catalog.config_of(task))
            samples = results.get("n-samples", {}).get(task, {}).get("effective", 0)
            scores[task] = TaskScore(task, metric, value, stderr, int(samples))
        return scores

    def _evaluate_code_tasks(self, model, tokenizer, samples=None) -> dict[str, TaskScore]:
        """Code tasks: the child builds the prompts and runs the completions; the model stays here and generates
        them on its own device and backend (see :mod:`.code_child`: no copy of the model is written)."""
        from accelerate.utils import patch_environment
        from lm_eval.api.instance import Instance

        chosen = {t: samples[t] for t in self.code_tasks} if samples else None
        requests = self._code_requests(chosen, tokenizer)
        with patch_environment(local_rank="0"), quiet_lm_eval(), self._lm(model, tokenizer) as lm:
            # HFLM sorts and batches the requests itself; each Instance carries one prompt and its until/max_gen_toks.
            instances = [Instance("generate_until", {}, (request[1], request[2]), index) for index, request in enumerate(requests)]
            completions = lm.generate_until(instances)
        replayed = {key: text for (key, *_), text in zip(requests, completions)}
        results = self._run_code_child("score", chosen, tokenizer, completions=replayed)
        return self._scores_from(results)

    def _code_requests(self, chosen, tokenizer) -> list:
        """The code tasks' generation requests (key, prompt, settings, task, document), the same for every model:
        built once per choice of documents."""
        key = json.dumps(chosen, sort_keys=True)
        cached = self._code_requests_by_documents.get(key)
        if cached is None:
            cached = self._run_code_child("requests", chosen, tokenizer)["requests"]
            self._code_requests_by_documents[key] = cached
        return cached

    def _run_code_child(self, mode: str, chosen, tokenizer, completions: dict[str, str] | None = None) -> dict:
        with tempfile.TemporaryDirectory(prefix="hfmg-code-eval-") as tmp:
            spec = {
                "mode": mode,
                "tasks": self.code_tasks,
                "index_paths": self.catalog.index_paths,
                "local_data": {t: o for t, o in self.catalog.local_overrides().items() if t in self.code_tasks},
                "include_defaults": self.catalog.include_defaults,
                "limit": self.limit,
                "samples": chosen,
                "bootstrap_iters": self.bootstrap_iters,
                "chat_template": self.chat_template,
                "completions": completions,
                "out": str(Path(tmp) / "results.json"),
            }
            if self.chat_template:  # the prompts are built with the model's chat template: the tokenizer only
                tokenizer.save_pretrained(Path(tmp) / "tokenizer")
                spec["tokenizer"] = str(Path(tmp) / "tokenizer")
            (Path(tmp) / "spec.json").write_text(json.dumps(spec))
            copy_code_eval_metric(tmp)
            env = scrubbed_environment({"HF_ALLOW_CODE_EVAL": "1", "TOKENIZERS_PARALLELISM": "false"})
            what = f"Code evaluation of {', '.join(self.code_tasks)}"
            completed = run_with_time_limit(
                [sys.executable, "-m", "hf_mergeguard.evaluation.code_child", str(Path(tmp) / "spec.json")],
                env=env,
                cwd=tmp,
                timeout=self.code_timeout,
                what=what,
            )
            if completed.returncode != 0:
                raise MergeGuardError(
                    f"{what} failed in its child process ({'building the prompts' if mode == 'requests' else 'running the code'}): "
                    + (completed.stderr.strip().splitlines() or ["no output"])[-1],
                    "Rerun with --debug; the child's full log is shown there.",
                )
            log.debug(completed.stderr)
            return json.loads((Path(tmp) / "results.json").read_text())


# lm-eval's ``simple_evaluate`` default: the same few-shot examples as ``lm_eval --model hf``.
FEWSHOT_SEED = 1234


def seed_like_simple_evaluate(tasks) -> None:
    """Seed every task's few-shot sampler as ``simple_evaluate`` does, before each evaluation.

    ``lm_eval.evaluator.evaluate`` (which scores an in-memory model) does not: without this each evaluation draws
    its own few-shot examples, so two models would be scored on different prompts. (The global RNGs are left
    alone: decoding is greedy, and reseeding them here would change the training runs that follow.)
    """
    for task in tasks:
        if hasattr(task, "set_fewshot_seed"):
            task.set_fewshot_seed(seed=FEWSHOT_SEED)


def evaluate_model(
    model: str | os.PathLike,
    tasks: str | Sequence[str],
    *,
    revision: str | None = None,
    device: str | None = None,
    dtype=None,
    **kwargs,
) -> dict[str, TaskScore]:
    """Score a model folder or Hub repo id (``hf-mergeguard evaluate``)."""
    from ..environment import default_device
    from ..io.checkpoint import Checkpoint
    from .model_files import load_tokenizer

    checkpoint = Checkpoint.open(model, revision=revision)
    evaluator = Evaluator(tasks, **kwargs)
    loaded = checkpoint.load_model(dtype=dtype, device=device or default_device())
    return evaluator.evaluate(loaded, load_tokenizer(checkpoint.path))
