"""Next-token losses of a causal LM on labelled batches (labels -100 on the prompt and the padding): one definition
for training, the trap, criticality, the attacks and the data pre-flight."""

from __future__ import annotations

import torch


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy over the labelled positions."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
    )


def mean_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions of one batch."""
    return token_loss_sum(logits, labels) / max(int((labels[:, 1:] != -100).sum()), 1)


@torch.no_grad()
def mean_batch_loss(model, batches: list[dict]) -> float:
    """Mean next-token loss of ``model`` over ``batches`` (labelled tokens only, weighted by token)."""
    total, tokens = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total += float(token_loss_sum(logits, batch["labels"]))
        tokens += int((batch["labels"][:, 1:] != -100).sum())
    return total / max(1, tokens)
