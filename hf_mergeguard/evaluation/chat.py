"""Instruct models: whether to score and train with the tokenizer's chat template (``--chat-template``)."""

from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError
from ..training import Example


def use_chat_template(choice: str, tokenizer) -> bool:
    """``--chat-template`` resolved for ``tokenizer`` (auto: when it has a template). A template that cannot render a
    one-turn conversation is an error now, before any work."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if choice == "off" or (choice == "auto" and not has_template):
        return False
    if not has_template:
        raise ConfigError(
            "--chat-template on, but the model's tokenizer has no chat template.",
            "Use --chat-template auto or off, or ship the tokenizer_config.json that has the template.",
        )
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "2 + 2?"}], add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - jinja errors come in many types
        raise ConfigError(
            f"The tokenizer's chat template cannot render a conversation: {type(exc).__name__}: {exc}",
            "Fix chat_template in tokenizer_config.json, or pass --chat-template off to score plain prompts.",
        ) from None
    return True


def as_chat(tokenizer, examples: Sequence[Example]) -> list[Example]:
    """Training examples as the instruct model sees them at evaluation: the prompt as a user turn followed by the
    assistant's opening, the completion as the assistant's answer."""
    return [
        Example(
            tokenizer.apply_chat_template([{"role": "user", "content": e.prompt}], add_generation_prompt=True, tokenize=False),
            e.completion,
        )
        for e in examples
    ]
