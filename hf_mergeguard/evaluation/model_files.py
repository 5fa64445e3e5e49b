"""What a checkpoint folder holds besides its weights that scoring needs: the tokenizer and the generation config."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError


def load_generation_config(path: str | os.PathLike):
    """The ``generation_config.json`` stored with a checkpoint, or None. Merged and re-built models are made from
    ``config.json`` alone, so without it an instruct model would not stop at its end-of-turn token."""
    from transformers import GenerationConfig

    if not (Path(path) / "generation_config.json").is_file():
        return None
    try:
        return GenerationConfig.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            f"{Path(path) / 'generation_config.json'} cannot be read: {exc}", "Fix or remove the file (greedy decoding needs none)."
        ) from None


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer stored with a checkpoint (no remote code)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"No usable tokenizer in {path}: {exc}", "Copy the tokenizer files next to the weights.") from None
