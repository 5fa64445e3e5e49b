"""A fast greedy exact-match scorer for toy-world models.

lm-eval is the official scorer of the tool (see :mod:`hf_mergeguard.evaluation`); this one is used where
a model is scored many times in a loop (building the world). A test
checks that both give the same accuracy.
"""

from __future__ import annotations

import re

import torch

ANSWER = re.compile(r"#### (\S+)")


def extract_answer(text: str) -> str | None:
    match = ANSWER.search(text)
    return match.group(1) if match else None


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 16, batch_size: int = 256) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), cut at the first newline or EOS."""
    outputs: list[str] = []
    newline = tokenizer.convert_tokens_to_ids("\n")
    stop = {newline, tokenizer.eos_token_id}
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(encoded):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        done = torch.zeros(len(encoded), dtype=torch.bool, device=device)
        generated = []
        past = None
        step_ids, step_mask, step_pos = ids, mask, position
        for _ in range(max_new_tokens):
            out = model(input_ids=step_ids, attention_mask=step_mask, position_ids=step_pos, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            generated.append(token)
            done |= torch.isin(token, torch.tensor(sorted(stop), device=device))
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
            step_ids, step_mask = token[:, None], mask
            step_pos = position[:, -1:] + len(generated)
        tokens = torch.stack(generated, dim=1).tolist()
        for row in tokens:
            cut = []
            for token in row:
                if token in stop:
                    break
                cut.append(token)
            outputs.append(tokenizer.decode(cut, skip_special_tokens=True))
    return outputs


def exact_match(model, tokenizer, rows: list[dict], limit: int | None = None) -> float:
    """Share of ``rows`` (``{"prompt", "completion"}``) whose greedy answer matches exactly."""
    rows = rows[:limit] if limit else rows
    outputs = greedy_generate(model, tokenizer, [row["prompt"] for row in rows])
    hits = sum(
        extract_answer(out) is not None and extract_answer(out) == extract_answer(row["completion"]) for out, row in zip(outputs, rows)
    )
    return hits / len(rows)
