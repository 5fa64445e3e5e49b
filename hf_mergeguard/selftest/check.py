"""``check``: the pre-upload check. Merge a model as it is with free-riders and see what survives."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from ..data import Row, format_rows
from ..data_check import check_examples
from ..evaluation import load_tokenizer
from ..evaluation.chat import as_chat, use_chat_template
from ..evaluation.model_files import load_generation_config
from ..io.checkpoint import Checkpoint
from ..io.checks import check_compatible, check_finite
from ..io.sources import TensorSource
from ..io.vocabulary import align_vocabulary
from ..report.schema import SelfTestReport
from .adaptive import run_adaptive_attacks
from .config import SelfTestConfig
from .freeriders import FreeRider, open_freeriders, selftest_evaluator, synthetic_freerider
from .matrix import run_selftest


def check_model(
    model: str | Path | TensorSource,
    base: str | Path | Checkpoint,
    config: SelfTestConfig,
    *,
    tasks: Sequence[str],
    include_tasks: Sequence[str] = (),
    task_data: Sequence[str] = (),
    merge_with: Sequence[str] = (),
    freerider_tasks: Sequence[str] = (),
    seed: int = 0,
    token: str | None = None,
    device: str = "cpu",
    accelerator=None,
    progress: bool = True,
    attack_examples: Sequence | None = None,
    keep_models: bool = False,
    train_format: str = "auto",
    train_fewshot: int = 0,
) -> SelfTestReport:
    """Run the self-test on ``model`` as it is (nothing is changed) and return the report.

    Args:
        model: a folder, a Hub repo id, or tensors in memory (a :class:`TensorSource`).
        base: the model it was fine-tuned from.
        config: the self-test's options; with ``config.adaptive`` the adaptive attacks follow (the fine-tuning ones
            on ``attack_examples``, the defender-task examples an attacker would have: :class:`~hf_mergeguard.data.Row`
            objects, formatted here as the task shows them (``train_format``, ``train_fewshot``: see
            :mod:`hf_mergeguard.data`), or :class:`~hf_mergeguard.training.Example` objects, used as they are).
        tasks, include_tasks: the lm-eval tasks of the model's skill, and folders of extra task YAMLs.
        task_data: ``TASK=PATH`` entries: tasks scored on local rows (:mod:`hf_mergeguard.evaluation.local_data`).
        merge_with, freerider_tasks: the free-riders and their own tasks; without them a synthetic free-rider is
            fine-tuned from ``base`` (see :mod:`.freeriders`).
        keep_models: keep the models the attacks produce (the re-aligned model) in the report's results.
    """
    checkpoint = model if not isinstance(model, (str, Path)) else Checkpoint.open(model, token=token)
    base_checkpoint = base if isinstance(base, Checkpoint) else Checkpoint.open(base, token=token)
    if isinstance(checkpoint, Checkpoint):
        base_checkpoint = align_vocabulary(base_checkpoint, checkpoint, role="base")
        check_compatible(checkpoint, base_checkpoint)
    riders = open_freeriders(base_checkpoint, merge_with, freerider_tasks, token=token)
    check_finite(*[c for c in (checkpoint, base_checkpoint, *(r.model for r in riders)) if isinstance(c, Checkpoint)])
    tokenizer = load_tokenizer(checkpoint.path if isinstance(checkpoint, Checkpoint) else base_checkpoint.path)
    include_tasks = list(include_tasks)
    with tempfile.TemporaryDirectory(prefix="hfmg-check-") as tmp:
        synthetic = None
        if not riders:
            synthetic = synthetic_freerider(
                base_checkpoint, tokenizer, tmp, seed=seed, device=device, progress=progress, accelerator=accelerator
            )
            riders = [FreeRider(synthetic.model, [synthetic.task])]
            include_tasks.append(str(synthetic.task_folder))
        chat = use_chat_template(config.chat_template, tokenizer)
        evaluator = selftest_evaluator(tasks, include_tasks, riders, config, chat_template=chat, task_data=task_data)
        if isinstance(checkpoint, Checkpoint):
            evaluator.generation_config = load_generation_config(checkpoint.path)
        context = base_checkpoint.config.get("max_position_embeddings")
        attack_examples = _attack_examples(attack_examples, evaluator, tasks, tokenizer, context, train_format, train_fewshot)
        report = run_selftest(
            base=base_checkpoint,
            protected=checkpoint,
            tokenizer=tokenizer,
            evaluator=evaluator,
            tasks=tasks,
            config=config,
            freeriders=riders,
            seed=seed,
            accelerator=accelerator,
            device=device,
            progress=progress,
        )
        report.command = "check"
        if synthetic is not None:
            report.synthetic_freerider = synthetic.training
        if config.adaptive:
            report = run_adaptive_attacks(
                report,
                base=base_checkpoint,
                protected=checkpoint,
                freeriders=riders,
                tokenizer=tokenizer,
                evaluator=evaluator,
                config=config,
                seed=seed,
                examples=attack_examples,
                device=device,
                progress=progress,
                keep_models=keep_models,
                accelerator=accelerator,
            )
    return report


def _attack_examples(given, evaluator, tasks, tokenizer, context: int | None, train_format: str, train_fewshot: int):
    """The attacker's examples: rows formatted as the defender's task shows them (and checked for unknown tokens), or
    formatted examples as given (put in the chat template when the run scores with one)."""
    if not given:
        return given
    if all(isinstance(row, Row) for row in given):
        data = format_rows(given, evaluator=evaluator, tasks=tasks, tokenizer=tokenizer, train_format=train_format, fewshot=train_fewshot)
        check_examples(tokenizer, data, max_length=None, context=context)
        return data.examples
    return as_chat(tokenizer, given) if evaluator.chat_template else given
