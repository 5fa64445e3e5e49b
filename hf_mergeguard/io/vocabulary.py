"""Fine-tunes that added tokens: every model of a run lined up on the defender's vocabulary.

A fine-tune often adds tokens (a pad token, chat markers) and resizes its embeddings, so its ``embed_tokens`` and
``lm_head`` have more rows than the base's. As mergekit does with ``tokenizer_source`` set to a model, the run uses the
defender's vocabulary for every model: the base (and a free-rider that did not add them) gets the defender's own rows
for the added tokens, so the task vector is zero there (an added token's embedding is part of the release, not of the
skill a merge transfers), and every tensor lines up for the defenses and the merges. It applies when the added tokens
come after the base's (the base's ids keep their tokens, checked on the tokenizers); other differences (a trimmed
vocabulary, a free-rider that added other tokens) cannot be reconciled and are refused before any work.
"""

from __future__ import annotations

import logging

import torch

from ..architectures import EMBED, LM_HEAD
from ..errors import IncompatibleModelsError
from .checkpoint import Checkpoint
from .safetensors_format import TensorSpec

log = logging.getLogger(__name__)


class VocabularyAligned(Checkpoint):
    """``checkpoint`` with its embedding rows extended to ``reference``'s vocabulary, the added rows read from
    ``reference`` (a view: nothing is written, the files are not modified)."""

    def __init__(self, checkpoint: Checkpoint, reference: Checkpoint):
        self.__dict__.update(checkpoint.__dict__)
        self.unaligned, self.reference = checkpoint, reference
        self.rows = checkpoint.geometry.vocab_size
        self.config = {**checkpoint.config, "vocab_size": reference.geometry.vocab_size}
        self._specs = dict(checkpoint._specs)
        for name in (EMBED, LM_HEAD):
            if name in self._specs:
                self._specs[name] = TensorSpec(self._specs[name].dtype, reference.spec(name).shape)
        # Scores and caches keyed by the files must not take this view for the files themselves.
        self.fingerprint_salt = f"vocabulary aligned to {reference.source} ({reference.geometry.vocab_size} rows)"

    def get(self, name: str) -> torch.Tensor:
        tensor = self.unaligned.get(name)
        if name in (EMBED, LM_HEAD):
            added = self.reference.get(name)[self.rows :].to(tensor.dtype)
            tensor = torch.cat([tensor, added])
        return tensor


def _same_base_tokens(model: Checkpoint, other: Checkpoint) -> bool | None:
    """Whether ``other``'s tokenizer maps its ids to the same tokens as ``model``'s (None: a tokenizer is missing)."""
    from transformers import AutoTokenizer

    try:
        mine = AutoTokenizer.from_pretrained(str(model.path), trust_remote_code=False)
        theirs = AutoTokenizer.from_pretrained(str(other.path), trust_remote_code=False)
    except Exception:  # noqa: BLE001 - no tokenizer files: nothing to compare
        return None
    ids = range(len(theirs))
    return mine.convert_ids_to_tokens(list(ids)) == theirs.convert_ids_to_tokens(list(ids))


def align_vocabulary(checkpoint: Checkpoint, defender: Checkpoint, *, role: str, defender_added_tokens: bool = False) -> Checkpoint:
    """``checkpoint`` (the base or a free-rider) on ``defender``'s vocabulary: itself when they already agree, a
    :class:`VocabularyAligned` view when ``defender`` only appended tokens to it; otherwise an error naming the fix.
    ``defender_added_tokens``: the defender extended the base, so a model of its size must have the same tokens."""
    mine, theirs = defender.geometry.vocab_size, checkpoint.geometry.vocab_size
    if checkpoint.geometry.model_type != defender.geometry.model_type:
        return checkpoint  # another architecture: check_compatible says so
    if mine == theirs and not (defender_added_tokens and _same_base_tokens(defender, checkpoint) is False):
        return checkpoint
    if mine <= theirs or _same_base_tokens(defender, checkpoint) is False:
        raise IncompatibleModelsError(
            f"{defender.source} has a vocabulary of {mine} tokens and {role} {checkpoint.source} {theirs}, and the first is not "
            f"the second with tokens added after it: the embeddings cannot be lined up row by row.",
            f"Use the {role} with the tokenizer the fine-tune extended (the same ids for the same tokens), or merge models "
            "that share a tokenizer.",
        )
    log.info("%s: %d tokens added to the %d of %s; lined up on the fine-tune's vocabulary", defender.source, mine - theirs, theirs, role)
    return VocabularyAligned(checkpoint, defender)
