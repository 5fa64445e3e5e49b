"""Rows as an lm-eval task shows them: the one formatting path for training, calibration and attacks.

A row becomes the prompt evaluation builds for it (the task's description, ``num_fewshot`` of its few-shot examples,
``doc_to_text``, the chat template when the run scores with one: lm-eval's own ``Task.fewshot_context``) and the
completion evaluation expects after it (``target_delimiter`` + ``doc_to_target``; the answer alone as the assistant's
turn under a chat template). So a model trained on the rows learns exactly what it is scored on.
"""

from __future__ import annotations

from typing import Sequence

from ..training import Example


class UnreadableRow(Exception):
    """The task cannot format row ``index`` (a field its template reads is missing, or it renders empty)."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index = index
        self.reason = reason


def chat_renderer(tokenizer):
    """Renders a conversation as lm-eval's HF model does (``HFLM.apply_chat_template``), for ``fewshot_context``."""

    def render(history: list[dict], add_generation_prompt: bool = True) -> str:
        return tokenizer.apply_chat_template(
            history, tokenize=False, add_generation_prompt=add_generation_prompt, continue_final_message=not add_generation_prompt
        )

    return render


def _target_text(task, doc) -> str:
    """The reference answer as lm-eval writes it after a few-shot question (a choice index becomes its text)."""
    target = task.doc_to_target(doc)
    if isinstance(target, list):
        target = target[0] if target else ""
    if isinstance(target, int) and task.config.doc_to_choice is not None:
        target = task.doc_to_choice(doc)[target]
    return target if isinstance(target, str) else str(target)


def processed(task, docs: Sequence[dict]) -> list[dict]:
    """``docs`` through the task's ``process_docs`` (what lm-eval applies to its dataset's rows before formatting)."""
    process = getattr(task.config, "process_docs", None)
    if not callable(process):
        return list(docs)
    import datasets

    try:
        return list(process(datasets.Dataset.from_list([dict(d) for d in docs])))
    except Exception as exc:  # noqa: BLE001 - a task's own code fails in its own ways on rows it cannot read
        raise UnreadableRow(0, f"its process_docs fails on these rows ({type(exc).__name__}: {str(exc)[:200]})") from None


def format_for_task(task, docs: Sequence[dict], *, tokenizer=None, chat: bool = False, num_fewshot: int = 0) -> list[Example]:
    """Each of ``docs`` as ``task`` shows it at evaluation (see the module's doc); ``chat``: with ``tokenizer``'s chat
    template, few-shot examples as turns (``--chat-template``, as the evaluator scores).

    Raises:
        UnreadableRow: the first document the task cannot format, and why.
    """
    renderer = chat_renderer(tokenizer) if chat else None
    delimiter = task.config.target_delimiter or ""
    examples = []
    for index, doc in enumerate(docs):
        try:
            prefix = task.doc_to_prefix(doc) if getattr(task.config, "gen_prefix", None) else None
            prompt = task.fewshot_context(
                doc, num_fewshot, apply_chat_template=chat, fewshot_as_multiturn=chat, chat_template=renderer, gen_prefix=prefix
            )
            target = _target_text(task, doc)
        except Exception as exc:  # noqa: BLE001 - a missing field surfaces as KeyError, jinja's UndefinedError, ...
            raise UnreadableRow(index, f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(prompt, str):
            raise UnreadableRow(index, "the task builds several prompts per row (a multiple-input task)")
        if not target.strip():
            raise UnreadableRow(index, "its answer (doc_to_target) is empty")
        if prefix:
            completion = (" " if not prefix[-1].isspace() and not target[0].isspace() else "") + target
        else:
            completion = target if chat else delimiter + target
        examples.append(Example(prompt, completion))
    return examples


def training_split_examples(task, limit: int, *, tokenizer=None, chat: bool = False) -> list[Example]:
    """Up to ``limit`` rows of ``task``'s own training split, formatted (its rows are already through its
    ``process_docs``); [] when it has none."""
    if not task.has_training_docs():
        return []
    docs = []
    for doc in task.training_docs():
        docs.append(doc)
        if len(docs) >= limit:
            break
    return format_for_task(task, docs, tokenizer=tokenizer, chat=chat)
