"""Before any training: is the defender's data something the model can learn from, and is it the model's own?

* :func:`check_examples`: every formatted example tokenizes without unknown tokens, fits the context, and has an
  answer to learn; the rows that do not are refused by their row number.
* :func:`check_model_knows_data`: the fine-tune's loss on a sample of the formatted rows must be below the base's. A
  fine-tune that does not know its own training data points at a format mismatch or the wrong file, and finding that
  out now costs two forward passes instead of a protection run.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

from .data import TrainingData, load_train_examples
from .errors import TrainDataError
from .losses import mean_batch_loss
from .training import encode_examples, loss_batches

log = logging.getLogger(__name__)

LOSS_SAMPLE = 32  # rows the fine-tune and the base are compared on
LISTED_ROWS = 5  # row numbers an error names
DEFAULT_MAX_LENGTH = 512  # the loss comparison's cut when no stage trains (check, attack)


def _rows(where: Sequence[str], indices: Sequence[int]) -> str:
    named = ", ".join(where[i] for i in indices[:LISTED_ROWS])
    return named + (f" and {len(indices) - LISTED_ROWS} more" if len(indices) > LISTED_ROWS else "")


def unknown_characters(tokenizer, text: str) -> list[str]:
    """The characters of ``text`` that ``tokenizer`` maps to its unknown token (none for byte-level tokenizers)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    return sorted(ch for ch in set(text) if unk in tokenizer(ch, add_special_tokens=False)["input_ids"])


def check_examples(
    tokenizer, data: TrainingData, *, max_length: int | None, context: int | None = None, what: str = "--train-data"
) -> None:
    """Refuse examples that are empty, hold unknown tokens, or do not fit ``max_length`` and the model's ``context``
    (``max_length`` None: no stage trains on them whole; only the context bounds them).

    Raises:
        TrainDataError: naming the rows (up to five) and the fix.
    """
    examples, where = data.examples, data.where
    empty = [i for i, e in enumerate(examples) if not e.completion.strip()]
    if empty:
        raise TrainDataError(
            f"{what}: {len(empty)} row(s) have nothing to learn (an empty answer): {_rows(where, empty)}.",
            "Remove the empty rows, or fill in their answers.",
        )
    encoded = [ids for ids, _ in encode_examples(tokenizer, examples, max_length=10**9)]  # whole: nothing cut yet
    unk = tokenizer.unk_token_id
    unknown = [i for i, ids in enumerate(encoded) if unk in ids] if unk is not None else []
    if unknown:
        first = examples[unknown[0]]
        characters = unknown_characters(tokenizer, first.prompt + first.completion)
        raise TrainDataError(
            f"{what}: {len(unknown)} row(s) hold text the model's tokenizer does not know (the unknown token): "
            f"{_rows(where, unknown)}; in the first, the characters {', '.join(repr(c) for c in characters) or '(several)'}. "
            f"The rows are {data.description}.",
            "The model never saw this text: check that the rows are in the format the task shows (--train-format) and "
            "are the model's own data, or remove the characters.",
        )
    limits = [n for n in (max_length, context) if n]
    if not limits:
        return
    limit = min(limits)
    lengths = [len(ids) for ids in encoded]
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if too_long:
        longest = max(lengths)
        bound = f"--max-length {max_length}" if limit == max_length else f"the model's context ({context} tokens)"
        fewshot = " (or lower --train-fewshot)" if "few-shot" in data.description else ""
        if context is None or longest <= context:
            hint = f"Raise --max-length to at least {longest}, or shorten or remove those rows{fewshot}."
        else:
            hint = f"Shorten or remove those rows{fewshot}: the model reads at most {context} tokens."
        raise TrainDataError(
            f"{what}: {len(too_long)} row(s) are longer than {bound}, up to {longest} tokens: {_rows(where, too_long)}. "
            "Training would cut their answers off.",
            hint,
        )


def _load_weights(module, checkpoint) -> None:
    """``checkpoint``'s weights into ``module``, one tensor at a time (a model of the same architecture and shapes:
    ``check_compatible`` ran; a tied head is one parameter with the embeddings)."""
    params = dict(module.named_parameters())
    stored = set()
    with torch.no_grad():
        for name, tensor in checkpoint.iter_tensors():
            if name in params:
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
                stored.add(name)
    if set(params) - stored:
        raise TrainDataError(f"The base does not store {sorted(set(params) - stored)[:3]} of the fine-tune's weights.")


def check_model_knows_data(data: TrainingData, model, base, tokenizer, *, device: str, max_length: int) -> dict:
    """The fine-tune's and the base's loss on the first :data:`LOSS_SAMPLE` formatted rows (and the fine-tune's on the same
    rows as a task shows them, when another formatting was chosen); refuses a fine-tune not below its base.

    ``model``, ``base``: :class:`~.io.checkpoint.Checkpoint` objects, loaded one at a time on ``device``.

    Raises:
        TrainDataError: the fine-tune's loss is not below the base's (a format mismatch or the wrong file).
    """
    sample = data.examples[:LOSS_SAMPLE]
    loaded = model.load_model(device=device)
    loaded.eval()
    batches, _ = loss_batches(tokenizer, sample, max_length=max_length, batch_size=8, device=device)
    losses = {"model": mean_batch_loss(loaded, batches)}
    if data.in_task_format:
        in_task, _ = loss_batches(tokenizer, data.in_task_format[:LOSS_SAMPLE], max_length=max_length, batch_size=8, device=device)
        losses["model_in_task_format"] = mean_batch_loss(loaded, in_task)
    _load_weights(loaded, base)  # the base's weights into the same module: one model built, not two
    losses["base"] = mean_batch_loss(loaded, batches)
    del loaded
    figures = {key: round(value, 4) for key, value in losses.items()}
    log.info(
        "Training data: %d rows %s; on the first %d, the fine-tune's loss is %.3f nats/token, the base's %.3f%s",
        len(data.examples),
        data.description,
        len(sample),
        losses["model"],
        losses["base"],
        f", the fine-tune's in the task's format {losses['model_in_task_format']:.3f}" if "model_in_task_format" in losses else "",
    )
    task_note = ""
    if "model_in_task_format" in losses and losses["model_in_task_format"] < losses["model"]:
        task_note = (
            f" In the task's own format the fine-tune's loss is {losses['model_in_task_format']:.3f}: --train-format auto trains on that."
        )
        log.warning("Training data: the fine-tune knows these rows better in the task's format.%s", task_note)
    if not math.isfinite(losses["model"]) or losses["model"] >= losses["base"]:
        raise TrainDataError(
            f"The fine-tuned model does not know its own training data: on {len(sample)} rows of --train-data "
            f"({data.description}) its loss is {losses['model']:.3f} nats/token, not below the base's {losses['base']:.3f}.{task_note}",
            "The rows are likely in another format than the model was trained on, or from the wrong file: check "
            "--train-data and --train-format. (--no-data-check skips this comparison.)",
        )
    return figures


def training_max_length(config) -> int | None:
    """The shortest ``max_length`` of the run's training stages (None: nothing is trained, e.g. ``check``)."""
    from .protect.stack import parse_method

    lengths = []
    for name in parse_method(config.method) if getattr(config, "method", None) else []:
        options = config.defenses[name]
        for holder in (options, getattr(options, "stage1", None)):
            if isinstance(getattr(holder, "max_length", None), int):
                lengths.append(holder.max_length)
                break
    return min(lengths) if lengths else None


def check_training_data(config, inputs, *, device: str) -> None:
    """Every pre-flight on the run's data, before any work: the defender's rows (and a defense's stand-in free-rider
    rows) against the tokenizer and the context, then the fine-tune's loss on its rows against the base's."""
    from .protect.stack import parse_method

    context = inputs.model.config.get("max_position_embeddings")
    max_length = training_max_length(config)
    data = inputs.train_data
    if data is not None:
        check_examples(inputs.tokenizer, data, max_length=max_length, context=context)
    for name in parse_method(config.method) if getattr(config, "method", None) else []:
        sources = getattr(config.defenses[name], "rider_sources", list)()
        for rider_data in sources:
            rider = load_train_examples(rider_data)
            stand_in = TrainingData(rider, [f"{rider_data} row {i + 1}" for i in range(len(rider))], "fixed", "in the fixed formatting")
            check_examples(inputs.tokenizer, stand_in, max_length=max_length, context=context, what="--trap-rider-data")
    if data is not None and config.data_check:
        data.losses = check_model_knows_data(
            data, inputs.model, inputs.base, inputs.tokenizer, device=device, max_length=max_length or DEFAULT_MAX_LENGTH
        )
