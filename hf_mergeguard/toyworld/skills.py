"""Synthetic skills with exact-match answers, and the character tokenizer that reads them.

Every example is a prompt and a completion ``"#### <output>"``: the GSM8K answer format, so the same regex scores
the toy tasks and GSM8K. The prompt is ``"<skill> <input>\\n"`` (style ``plain``, the first world) or
``"q: <skill> of <input>\\na: "`` (style ``question``, the second world: other skills in another format, the
validation the merge trap is not tuned on).
"""

from __future__ import annotations

import random
import string
from typing import Callable

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = list(string.digits + string.ascii_lowercase + " +=#:,-\n")


def make_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: every character is one token, decoding is exact."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=128,
    )


# Each skill has a "full" form (what fine-tunes learn and tests measure) and a "base" form the base model is
# pretrained on: the same skill on a narrower range (shorter inputs, smaller numbers). The base is then partly
# able on the full test set (it generalizes a little beyond its range), and a fine-tune teaches a real
# extension of what the base knows, which keeps fine-tunes gentle enough for merges to work.


def _digits(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(rng.randint(low, high)))


def _letters(rng: random.Random, low: int, high: int, alphabet: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def _add(rng: random.Random, base_form: bool) -> tuple[str, str]:
    a, b = rng.randint(10, 99 if base_form else 999), rng.randint(10, 99)
    return f"{a} {b}", str(a + b)


def _sort(rng: random.Random, base_form: bool) -> tuple[str, str]:
    digits = _digits(rng, 4, 8 if base_form else 10)
    return digits, "".join(sorted(digits))


def _rev(rng: random.Random, base_form: bool) -> tuple[str, str]:
    word = _letters(rng, 4, 8 if base_form else 10)
    return word, word[::-1]


def _count(rng: random.Random, base_form: bool) -> tuple[str, str]:
    letters = _letters(rng, 4, 9 if base_form else 14, "abc")
    return letters, str(letters.count("a"))


def _copy(rng: random.Random, base_form: bool) -> tuple[str, str]:
    word = _letters(rng, 4, 8 if base_form else 10)
    return word, word


def _maxd(rng: random.Random, base_form: bool) -> tuple[str, str]:
    digits = _digits(rng, 3, 5 if base_form else 10)
    return digits, max(digits)


def _dup(rng: random.Random, base_form: bool) -> tuple[str, str]:
    word = _letters(rng, 2, 3 if base_form else 4)  # few letters out: the tasks generate 16 tokens
    return word, "".join(c + c for c in word)


def _shift(rng: random.Random, base_form: bool) -> tuple[str, str]:
    word = _letters(rng, 3, 5 if base_form else 8)
    return word, "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in word)


def _alt(rng: random.Random, base_form: bool) -> tuple[str, str]:
    word = _letters(rng, 4, 8 if base_form else 12)
    return word, word[::2]


SKILLS: dict[str, Callable[[random.Random, bool], tuple[str, str]]] = {
    "add": _add,
    "sort": _sort,
    "rev": _rev,
    "count": _count,
    "copy": _copy,
    # The second world's: the largest digit, doubled letters, a Caesar shift, every other letter.
    "maxd": _maxd,
    "dup": _dup,
    "shift": _shift,
    "alt": _alt,
}

PROMPT_STYLES = ("plain", "question")


def prompt_of(skill: str, text: str, style: str = "plain") -> str:
    if style == "question":
        return f"q: {skill} of {text}\na: "
    return f"{skill} {text}\n"


def completion_of(answer: str) -> str:
    return f"#### {answer}"


def make_split(
    skill: str, train_size: int, test_size: int, seed: int, *, base_form: bool = False, style: str = "plain"
) -> tuple[list[dict], list[dict]]:
    """Disjoint train and test examples of one skill, as ``{"prompt", "completion"}`` rows.

    The test set is always the full skill; ``base_form`` draws the training rows from the base's form.
    """
    rng = random.Random(f"{seed}-{skill}")
    generate = SKILLS[skill]
    test: dict[str, str] = {}
    while len(test) < test_size:
        text, answer = generate(rng, False)
        test[text] = answer
    train_rng = random.Random(f"{seed}-{skill}-{'base' if base_form else 'full'}")
    train = []
    attempts = 0
    while len(train) < train_size and attempts < 50 * train_size:
        attempts += 1
        text, answer = generate(train_rng, base_form)
        if text not in test:
            train.append({"prompt": prompt_of(skill, text, style), "completion": completion_of(answer)})
    return train, [{"prompt": prompt_of(skill, t, style), "completion": completion_of(a)} for t, a in test.items()]
