"""The toy world: deterministic, laid out as documented, and merges work in it (the precondition)."""

import json
from dataclasses import replace

import torch

from hf_mergeguard.attacks.merges import get_merge_method, merge_state_dict
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.io.hf_models import model_from_state_dict
from hf_mergeguard.toyworld import build_toy_world, exact_match, make_split, make_tokenizer


def test_data_is_deterministic_and_test_prompts_are_held_out():
    train, test = make_split("sort", 500, 100, seed=0)
    assert (train, test) == make_split("sort", 500, 100, seed=0)
    assert make_split("sort", 500, 100, seed=1) != (train, test)
    assert not {row["prompt"] for row in test} & {row["prompt"] for row in train}
    assert train[0]["completion"].startswith("#### ")
    # The base form is the narrower range the base is pretrained on; tests always use the full form.
    base_train, base_test = make_split("sort", 500, 100, seed=0, base_form=True)
    assert base_test == test
    assert max(len(r["prompt"]) for r in base_train) < max(len(r["prompt"]) for r in train)


def test_tokenizer_round_trips_every_character():
    tokenizer = make_tokenizer()
    text = "sort 53817\n#### 13578"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tokenizer.decode(ids) == text


def test_training_is_deterministic(tmp_path):
    """Two builds of a (tiny) world from the same config give bitwise identical weights (the pico world's shapes: the
    build's code path is the default world's)."""
    from hf_mergeguard.testing import PICO_WORLD

    tiny = replace(PICO_WORLD, train_size=200, test_size=20, base_steps=6, finetune_steps=3, base_batch=8, finetune_batch=8)
    first = build_toy_world(config=tiny, cache_dir=tmp_path / "a", progress=False)
    second = build_toy_world(config=tiny, cache_dir=tmp_path / "b", progress=False)
    for name in ["base", *tiny.skills]:
        one, two = Checkpoint(first.models / name), Checkpoint(second.models / name)
        for key, tensor in one.iter_tensors():
            assert torch.equal(tensor, two.get(key)), (name, key)
    changed = build_toy_world(config=replace(tiny, seed=1), cache_dir=tmp_path / "a", progress=False)
    assert not torch.equal(Checkpoint(changed.base).get("model.norm.weight"), Checkpoint(first.base).get("model.norm.weight"))


def test_layout_of_demo_folder(toy_world, tmp_path):
    world = build_toy_world(tmp_path / "demo", progress=False)
    assert (world.root / "models" / "base" / "config.json").is_file()
    for skill in world.config.skills:
        assert (world.root / "models" / skill / "model.safetensors").is_file()
        assert (world.root / "models" / skill / "tokenizer.json").is_file()
        for split in ("train", "test"):
            assert (world.root / "data" / skill / f"{split}.jsonl").is_file()
        task = (world.root / "tasks" / f"toy_{skill}.yaml").read_text()
        # Tasks point at the copied data by absolute path, not at the cache.
        assert str((world.root / "data" / skill / "test.jsonl").resolve()) in task
    assert json.loads((world.root / "world.json").read_text())["digest"] == world.config.digest()


def test_finetunes_learn_their_skill(toy_world):
    scores = toy_world.scores
    for skill in toy_world.config.skills:
        assert scores[skill][skill] >= scores["base"][skill] + 0.15, (skill, scores)
    assert scores["sort"]["sort"] >= 0.9


def test_merge_precondition(toy_world):
    """An unprotected task-arithmetic merge (lambda 1) of the count and rev fine-tunes keeps >= 70% of each
    one's accuracy gain over the base on its own skill."""
    tokenizer = make_tokenizer()
    base = Checkpoint(toy_world.base)
    count, rev = Checkpoint(toy_world.model("count")), Checkpoint(toy_world.model("rev"))
    merged = merge_state_dict(get_merge_method("task_arithmetic"), 1.0, base=base, defender=count, freeriders=[rev])
    model = model_from_state_dict(base.config, merged)
    kept = {}
    for skill in ("count", "rev"):
        score = exact_match(model, tokenizer, toy_world.rows(skill))
        floor, top = toy_world.scores["base"][skill], toy_world.scores[skill][skill]
        kept[skill] = (score - floor) / (top - floor)
    assert kept["count"] >= 0.7 and kept["rev"] >= 0.7, kept
