"""Checkpoint I/O: round trips, sharding, dtypes, tied embeddings, atomic writes, refusals."""

import json
import os

import pytest
import torch

from hf_mergeguard.errors import (
    CheckpointError,
    CorruptCheckpointError,
    NonFiniteWeightsError,
    OfflineError,
    OutputExistsError,
    PickleCheckpointError,
)
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.io.hf_models import model_state_dict, save_model
from hf_mergeguard.io.safetensors_format import INDEX_FILE
from hf_mergeguard.io.writer import parse_size, stamp_metadata, write_checkpoint


def _hf_load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="auto")


def _copy(source: Checkpoint, target, **kwargs):
    return write_checkpoint(target, source.iter_tensors(), source.layout, companions_from=source, **kwargs)


@pytest.mark.parametrize("shard", ["5GB", 20_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_single_and_sharded(pico, tmp_path, shard, dtype):
    folder = pico("llama", dtype=dtype, max_shard_size=shard)
    checkpoint = Checkpoint(folder)
    sharded = shard != "5GB"
    assert (folder / INDEX_FILE).is_file() == sharded
    assert len(checkpoint.weight_files) > 1 if sharded else len(checkpoint.weight_files) == 1
    assert {spec.dtype for spec in checkpoint.layout.values()} == {dtype}

    # transformers reads what we wrote, tensor for tensor.
    model = _hf_load(folder)
    reference = model_state_dict(model)
    assert set(reference) == set(checkpoint.tensor_names)
    for name, tensor in checkpoint.iter_tensors():
        assert tensor.dtype == dtype
        assert torch.equal(tensor, reference[name]), name

    # A streamed copy is bitwise identical, keeps sharding limits, copies companions, stamps metadata.
    copy = Checkpoint(_copy(checkpoint, tmp_path / "copy", max_shard_size=shard, metadata=stamp_metadata("copy", "abc")))
    for name, tensor in copy.iter_tensors():
        assert torch.equal(tensor, checkpoint.get(name))
    assert (copy.path / "config.json").read_text() == (folder / "config.json").read_text()
    assert copy.metadata["hf_mergeguard_method"] == "copy"
    assert copy.metadata["hf_mergeguard_config_digest"] == "abc"
    assert len(copy.weight_files) == len(checkpoint.weight_files)


def test_tied_embeddings_stay_tied(pico, tmp_path):
    folder = pico("gemma2")
    checkpoint = Checkpoint(folder)
    assert checkpoint.geometry.tie_word_embeddings
    assert "lm_head.weight" not in checkpoint
    model = checkpoint.load_model()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    saved = Checkpoint(save_model(model, tmp_path / "saved"))
    assert "lm_head.weight" not in saved
    hf = _hf_load(saved.path)
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()


def test_load_model_matches_transformers(pico):
    folder = pico("qwen2")
    ours = Checkpoint(folder).load_model()
    theirs = _hf_load(folder)
    ids = torch.randint(0, 64, (2, 40))
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)


def test_failure_mid_write_leaves_nothing(pico, tmp_path):
    source = Checkpoint(pico("llama"))

    def failing():
        for index, item in enumerate(source.iter_tensors()):
            if index == 5:
                raise RuntimeError("injected failure")
            yield item

    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected"):
        write_checkpoint(target, failing(), source.layout, companions_from=source)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []

    # With --overwrite, a failure leaves the existing output exactly as it was.
    _copy(source, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(RuntimeError, match="injected"):
        write_checkpoint(target, failing(), source.layout, companions_from=source, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_existing_output_refused(pico, tmp_path):
    source = Checkpoint(pico("llama"))
    _copy(source, tmp_path / "out")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _copy(source, tmp_path / "out")
    _copy(source, tmp_path / "out", overwrite=True)


def test_stale_partial_of_killed_run_is_removed(pico, tmp_path):
    source = Checkpoint(pico("llama"))
    stale = tmp_path / ".out.partial-999999999-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    _copy(source, tmp_path / "out")
    assert not stale.exists()
    Checkpoint(tmp_path / "out")


def test_non_finite_weights_are_never_written(pico, tmp_path):
    source = Checkpoint(pico("llama"))
    name = source.tensor_names[3]

    def poisoned():
        for key, tensor in source.iter_tensors():
            if key == name:
                tensor = tensor.clone()
                tensor.view(-1)[0] = float("nan")
            yield key, tensor

    with pytest.raises(NonFiniteWeightsError, match=name):
        write_checkpoint(tmp_path / "out", poisoned(), source.layout)
    assert not (tmp_path / "out").exists()


def test_pickle_only_checkpoint_refused(tmp_path, pico):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((pico("llama") / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(PickleCheckpointError) as info:
        Checkpoint(folder)
    assert "pytorch_model.bin" in str(info.value) and "save_pretrained" in info.value.hint


def test_truncated_and_corrupt_files(pico, tmp_path):
    folder = pico("llama")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        Checkpoint(folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(CorruptCheckpointError, match="corrupt safetensors header"):
        Checkpoint(folder)
    (folder / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(CorruptCheckpointError, match="corrupt safetensors header"):
        Checkpoint(folder)


def test_index_naming_missing_shard(pico):
    folder = pico("llama", max_shard_size=20_000)
    shard = json.loads((folder / INDEX_FILE).read_text())["weight_map"]["model.norm.weight"]
    (folder / shard).unlink()
    with pytest.raises(CorruptCheckpointError, match=shard):
        Checkpoint(folder)


def test_not_a_folder_and_no_config(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing folder nor a Hub repo id"):
        Checkpoint.open(str(tmp_path / "nope" / "../x y"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        Checkpoint(tmp_path / "empty")


def test_parse_size():
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("2MiB") == 2 * 1024 * 1024
    assert parse_size(123) == 123
    with pytest.raises(ValueError):
        parse_size("lots")


def _fake_hub_cache(cache, repo_id, folder):
    """Lay out ``folder`` as huggingface_hub's cache does after a download of ``repo_id``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_open_repo_id_from_offline_cache(pico, tmp_path, monkeypatch):
    """The real snapshot_download code path, in offline mode, against a populated HF cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    commit = _fake_hub_cache(cache, "org/tiny", pico("llama"))
    checkpoint = Checkpoint.open("org/tiny", cache_dir=cache)
    assert checkpoint.revision == commit and checkpoint.source == "org/tiny"
    assert checkpoint.geometry.model_type == "llama"
    with pytest.raises(OfflineError) as info:
        Checkpoint.open("org/not-cached", cache_dir=cache)
    assert "HF_HUB_OFFLINE" in info.value.hint


def test_inputs_are_never_modified(pico, tmp_path):
    folder = pico("llama", max_shard_size=20_000)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
    source = Checkpoint(folder)
    _copy(source, tmp_path / "copy")
    model = source.load_model()
    save_model(model, tmp_path / "saved", companions_from=source)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()} == before
    assert os.access(folder, os.W_OK)  # we did not need to lock it either


def test_a_tied_model_that_stores_its_lm_head_lines_up_with_its_base(tmp_path, pico):
    """Gemma-style tied embeddings: a fine-tune saved with a redundant lm_head.weight (some trainers write it) ran with
    the embeddings in both places; it is read without it and is compatible with a base that does not store it."""
    from safetensors.torch import save_file

    from hf_mergeguard.io.checks import check_compatible

    base = Checkpoint(pico("gemma2"))
    tuned_path = pico("gemma2", seed=1)
    tensors = Checkpoint(tuned_path).state_dict()
    for file in tuned_path.glob("*.safetensors"):
        file.unlink()
    save_file(
        {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()}, str(tuned_path / "model.safetensors"), {"format": "pt"}
    )
    tuned = Checkpoint(tuned_path)
    assert "lm_head.weight" not in tuned.tensor_names and set(tuned.tensor_names) == set(base.tensor_names)
    check_compatible(tuned, base)
