"""Child process for tasks that execute model-written code (HumanEval, MBPP): it loads the tasks and runs the code,
and never sees the model.

What needs isolating is the code, not the model: so the parent (:class:`hf_mergeguard.evaluation.harness.Evaluator`)
generates the completions with the model it already holds, on its own device and backend, and the child does the
rest, in two runs, each with an environment scrubbed of tokens and keys (``HF_ALLOW_CODE_EVAL=1`` set, no HF token
file), in a temporary working folder, under a time limit:

1. ``requests``: lm-eval builds the tasks' generation requests (prompts and ``until``/``max_gen_toks``; loading
   HumanEval runs its metric's own self-check, which is code execution too) and the child writes them out;
2. ``score``: lm-eval scores the tasks again with the parent's completions replayed in place of a model, so the
   filters, the metric (which executes the completions) and the aggregation are lm-eval's own.

Before, the child loaded a copy of the model the parent wrote for each scoring: 16 GB per merge at 8B, and on CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class RequestsRecorded(Exception):
    """Raised by the recording model once lm-eval has handed it every generation request (nothing is scored)."""


def _model_class():
    from lm_eval.api.model import LM

    class StandInModel(LM):
        """lm-eval's model interface without a model: records the generation requests, or replays completions."""

        def __init__(self, completions: dict[str, str] | None, tokenizer_folder: str | None):
            super().__init__()
            self.completions = completions  # None: record
            self.recorded: list[tuple] = []  # (key, prompt, generation settings, task, document index)
            self.tokenizer = None
            if tokenizer_folder:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, trust_remote_code=False)

        def generate_until(self, requests):
            if self.completions is None:
                self.recorded = [(request_key(r.args[0], r.args[1]), r.args[0], r.args[1], r.task_name, r.doc_id) for r in requests]
                raise RequestsRecorded
            return [self.completions[request_key(r.args[0], r.args[1])] for r in requests]

        def loglikelihood(self, requests):
            raise ValueError("Code tasks are scored from generated completions only (output_type: generate_until).")

        loglikelihood_rolling = loglikelihood

        # Chat templates: the prompts are built here, with the model's tokenizer (as lm-eval's HFLM does).
        def apply_chat_template(self, chat_history, add_generation_prompt=True):
            return self.tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt, continue_final_message=not add_generation_prompt
            )

        @property
        def tokenizer_name(self) -> str:
            return "hf-mergeguard-code-child"

    return StandInModel


def request_key(context: str, gen_kwargs: dict) -> str:
    """One generation request as a string: its prompt and its generation settings."""
    return json.dumps([context, gen_kwargs], sort_keys=True, default=str)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    import lm_eval
    from lm_eval.tasks import TaskManager

    from hf_mergeguard.evaluation.local_data import task_specs
    from hf_mergeguard.evaluation.sampling import subsamples

    manager = TaskManager(include_path=spec["index_paths"] or None, include_defaults=spec["include_defaults"])
    tasks = task_specs(manager, spec["tasks"], spec.get("local_data") or {})  # tasks on local files: their full configs
    # --limit scores the same seeded subset as the in-process tasks (harness.subsample).
    samples = spec.get("samples")
    if samples is None and spec["limit"]:
        samples = subsamples(manager.load(tasks)["tasks"], spec["limit"])
    recording = spec["mode"] == "requests"
    model = _model_class()(None if recording else spec["completions"], spec.get("tokenizer"))
    try:
        results = lm_eval.simple_evaluate(
            model=model,
            tasks=tasks,
            samples=samples,
            bootstrap_iters=spec["bootstrap_iters"],
            task_manager=manager,
            confirm_run_unsafe_code=True,
            log_samples=False,
            apply_chat_template=spec.get("chat_template", False),
            fewshot_as_multiturn=spec.get("chat_template", False),
        )
    except RequestsRecorded:
        # With ``samples`` lm-eval numbers a task's chosen documents 0, 1, ... in test-split order: back to the split's.
        chosen = {task: sorted(documents) for task, documents in (samples or {}).items()}
        requests = [(*request[:4], chosen[request[3]][request[4]] if request[3] in chosen else request[4]) for request in model.recorded]
        Path(spec["out"]).write_text(json.dumps({"requests": requests}, default=str))
        return 0
    if recording:  # no generation request at all: nothing to generate, the results stand
        Path(spec["out"]).write_text(json.dumps({"requests": []}))
        return 0
    Path(spec["out"]).write_text(json.dumps({"results": results["results"], "n-samples": results.get("n-samples", {})}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
