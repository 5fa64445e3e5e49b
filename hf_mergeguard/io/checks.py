"""Checks on the inputs before any work: does each checkpoint match its config, is this fine-tune really a
fine-tune of that base (architecture, tensor names, shapes), and do the weights hold only finite values."""

from __future__ import annotations

from ..architectures import LM_HEAD
from ..errors import IncompatibleModelsError
from .checkpoint import Checkpoint

_SHOWN = 5


def check_geometry(checkpoint: Checkpoint) -> None:
    """The checkpoint holds exactly the tensors its config describes, with the shapes it describes."""
    geometry = checkpoint.geometry
    expected = geometry.expected_tensor_names()
    problems = []
    for name in expected:
        if name not in checkpoint:
            problems.append(f"{name}: missing")
        elif checkpoint.spec(name).shape != geometry.expected_shape(name):
            problems.append(f"{name}: {checkpoint.spec(name).shape} stored, {geometry.expected_shape(name)} in config.json")
    allowed = set(expected) | ({LM_HEAD} if geometry.tie_word_embeddings else set())
    extra = [name for name in checkpoint.tensor_names if name not in allowed]
    problems += [f"{name}: not part of a {geometry.model_type} model" for name in extra]
    if problems:
        raise IncompatibleModelsError(
            f"{checkpoint.source} does not match its own config.json ({len(problems)} problem(s)): "
            + "; ".join(problems[:_SHOWN])
            + ("; ..." if len(problems) > _SHOWN else ""),
            "Re-export the model with save_pretrained, or fix config.json so it describes the weights.",
        )


def check_compatible(model: Checkpoint, base: Checkpoint, *, role: str = "base", merge_partner: bool = False) -> None:
    """Raise :class:`IncompatibleModelsError` unless ``model`` and ``base`` share architecture, names and shapes
    (from the headers alone: no tensor is read; :func:`check_finite` reads the values).

    Args:
        model: the fine-tune.
        base: the model it must have been fine-tuned from (``role`` names it in the message).
        merge_partner: ``model`` is a ``--merge-with`` model (the message and the fix say so).
    """
    check_geometry(model)
    check_geometry(base)
    mg, bg = model.geometry, base.geometry
    subject = f"--merge-with {model.source}" if merge_partner else model.source
    hint = (
        f"Merge only with fine-tunes of the same base ({base.source}) as the model you protect or check."
        if merge_partner
        else f"Pass the {role} model that {model.source} was fine-tuned from (same architecture and size)."
    )
    if mg.model_type != bg.model_type:
        raise IncompatibleModelsError(
            f"{subject} is a {mg.model_type} model but {role} {base.source} is a {bg.model_type} model.",
            hint,
        )
    if mg.vocab_size != bg.vocab_size:
        raise IncompatibleModelsError(
            f"{subject} has a vocabulary of {mg.vocab_size} tokens but {role} {base.source} has "
            f"{bg.vocab_size}: the embeddings cannot be lined up row by row (a fine-tune that appended tokens to its "
            "base's is lined up automatically; a model with tokens the fine-tune lacks is not).",
            hint,
        )
    problems = []
    for name in model.tensor_names:
        if name not in base:
            problems.append(f"{name}: in model, missing in {role}")
        elif model.spec(name).shape != base.spec(name).shape:
            problems.append(f"{name}: {model.spec(name).shape} in model, {base.spec(name).shape} in {role}")
    problems += [f"{name}: in {role}, missing in model" for name in base.tensor_names if name not in model]
    if problems:
        raise IncompatibleModelsError(
            f"{subject} and {role} {base.source} do not have the same tensors "
            f"({len(problems)} mismatch(es)): " + "; ".join(problems[:_SHOWN]) + ("; ..." if len(problems) > _SHOWN else ""),
            hint,
        )


def check_finite(*checkpoints: Checkpoint) -> None:
    """Read every tensor of each checkpoint once and refuse NaN/Inf (:class:`NonFiniteWeightsError`), before any
    training or merging: a bad input fails in seconds, not after hours. A checkpoint is scanned once however often
    it is checked."""
    for checkpoint in checkpoints:
        checkpoint.check_finite(progress=True)
