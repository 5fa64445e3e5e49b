"""Real tokenizers: the BOS prefix in training, and instruct models scored and trained with their chat template."""

import pytest

from hf_mergeguard.errors import ConfigError
from hf_mergeguard.evaluation import Evaluator
from hf_mergeguard.evaluation.chat import as_chat, use_chat_template
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.toyworld.skills import make_tokenizer
from hf_mergeguard.training import Example, encode_examples, special_prefix

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _bos_tokenizer():
    """The toy world's character tokenizer, adding ``<s>`` in front of every text like Llama-3's adds its BOS."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = make_tokenizer()
    bos = tokenizer.convert_tokens_to_ids("<s>")
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return tokenizer, bos


def test_training_adds_the_bos_the_evaluation_sees():
    """lm-eval encodes prompts with the tokenizer's defaults (BOS for Llama-3); training used to drop it."""
    tokenizer, bos = _bos_tokenizer()
    assert special_prefix(tokenizer) == [bos] and special_prefix(make_tokenizer()) == []  # the toy world: unchanged
    (ids, labels), (plain_ids, _) = encode_examples(tokenizer, [Example("ab ", "cd"), Example("", "xyz")], 64)
    assert ids[0] == bos and labels[0] == -100 and ids[1:4] == tokenizer("ab ", add_special_tokens=False)["input_ids"]
    assert plain_ids[0] == bos
    # A text that already starts with it (a chat template writes the BOS) does not get a second one.
    ((chat_ids, _),) = encode_examples(tokenizer, [Example("<s>ab ", "cd")], 64)
    assert chat_ids.count(bos) == 1


def test_chat_template_choice_and_failures():
    tokenizer = make_tokenizer()
    assert use_chat_template("auto", tokenizer) is False
    with pytest.raises(ConfigError, match="has no chat template"):
        use_chat_template("on", tokenizer)
    tokenizer.chat_template = TEMPLATE
    assert use_chat_template("auto", tokenizer) is True and use_chat_template("off", tokenizer) is False
    (example,) = as_chat(tokenizer, [Example("sort 42\n", "#### 24")])
    assert example.prompt == "<s><|user|>sort 42\n\n<|assistant|>" and example.completion == "#### 24"
    tokenizer.chat_template = "{% for m in messages %}{{ m.nope.deeper }}{% endfor %}"
    with pytest.raises(ConfigError, match="cannot render") as error:
        use_chat_template("auto", tokenizer)
    assert "--chat-template off" in error.value.hint


def test_an_instruct_model_is_scored_through_its_template(pico_world):
    """lm-eval's apply_chat_template path runs end to end on a pico model and scores every prompt (the pico model
    learns too little for the score itself to say anything)."""
    tokenizer = make_tokenizer()
    tokenizer.chat_template = TEMPLATE
    model = Checkpoint(pico_world.model("count")).load_model()
    plain = Evaluator("toy_count", include_tasks=[pico_world.tasks], limit=4)
    chat = Evaluator("toy_count", include_tasks=[pico_world.tasks], limit=4, chat_template=True)
    assert chat.evaluate(model, tokenizer)["toy_count"].samples == plain.evaluate(model, tokenizer)["toy_count"].samples == 4


def test_the_models_generation_config_is_used_for_every_scored_model(pico_world, tmp_path):
    """Merged models are built from config.json alone: the defender's generation_config.json (an instruct model's
    end-of-turn ids) is given to every model the evaluator scores; a broken one is a clear error."""
    import shutil

    from hf_mergeguard.evaluation.model_files import load_generation_config

    folder = tmp_path / "model"
    shutil.copytree(pico_world.model("count"), folder)
    assert load_generation_config(folder) is None or load_generation_config(folder).eos_token_id != [2, 3]
    (folder / "generation_config.json").write_text('{"eos_token_id": [2, 3], "do_sample": false}')
    evaluator = Evaluator("toy_count", include_tasks=[pico_world.tasks], limit=2)
    evaluator.generation_config = load_generation_config(folder)
    model = Checkpoint(pico_world.model("count")).load_model()
    evaluator.evaluate(model, make_tokenizer())
    assert model.generation_config.eos_token_id == [2, 3]
    (folder / "generation_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_generation_config(folder)
