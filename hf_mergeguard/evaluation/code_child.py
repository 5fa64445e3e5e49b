"""Child process that scores tasks executing model-written code (HumanEval, MBPP).

Started by :class:`hf_mergeguard.evaluation.harness.Evaluator` with an environment scrubbed of tokens and
keys (``HF_ALLOW_CODE_EVAL=1`` set, no HF token file), in a temporary working folder, under a time limit.
It reads a JSON spec (model folder, tasks, include paths, limit) and writes lm-eval's results as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_mergeguard.evaluation.sampling import subsamples

    model = AutoModelForCausalLM.from_pretrained(spec["model"], trust_remote_code=False, dtype="auto").to(spec.get("device", "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], trust_remote_code=False)
    manager = TaskManager(include_path=spec["index_paths"] or None, include_defaults=spec["include_defaults"])
    # --limit scores the same seeded subset as the in-process tasks (harness.subsample).
    samples = spec.get("samples")
    if samples is None and spec["limit"]:
        samples = subsamples(manager.load(spec["tasks"])["tasks"], spec["limit"])
    results = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec["batch_size"]),
        tasks=spec["tasks"],
        samples=samples,
        bootstrap_iters=spec["bootstrap_iters"],
        task_manager=manager,
        confirm_run_unsafe_code=True,
        log_samples=False,
        apply_chat_template=spec.get("chat_template", False),
        fewshot_as_multiturn=spec.get("chat_template", False),
    )
    Path(spec["out"]).write_text(json.dumps({"results": results["results"], "n-samples": results.get("n-samples", {})}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
