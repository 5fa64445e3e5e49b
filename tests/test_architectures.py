"""Geometry of the five supported families, checked against transformers' own models; compatibility."""

import pytest
import torch

from hf_mergeguard.architectures import SUPPORTED_MODEL_TYPES, geometry_from_config
from hf_mergeguard.errors import IncompatibleModelsError, UnsupportedArchitectureError
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.io.checks import check_compatible
from hf_mergeguard.io.hf_models import model_state_dict
from hf_mergeguard.testing import pico_config

EXPECTED = {
    # model_type: (head_dim, kv heads, qkv bias, qk_norm, tied, block norms)
    "llama": (8, 2, False, False, False, 2),
    "mistral": (8, 2, False, False, False, 2),
    "qwen2": (8, 2, True, False, False, 2),
    "qwen3": (16, 2, False, True, False, 2),
    "gemma2": (16, 2, False, False, True, 4),
}


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_geometry_matches_transformers(model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = pico_config(model_type)
    geometry = geometry_from_config(config)
    head_dim, kv, bias, qk_norm, tied, norms = EXPECTED[model_type]
    assert (geometry.head_dim, geometry.num_kv_heads, geometry.qkv_bias, geometry.qk_norm) == (head_dim, kv, bias, qk_norm)
    assert geometry.tie_word_embeddings == tied
    assert len(geometry.family.block_norms) == norms
    assert geometry.group_size == 2
    assert geometry.rotary_pairs[0] == (0, head_dim // 2)

    hf_config = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(hf_config)
    tensors = model_state_dict(model)
    assert geometry.expected_tensor_names() == list(tensors), "names and HF order"
    for name, tensor in tensors.items():
        assert geometry.expected_shape(name) == tuple(tensor.shape), name


def test_softcapping_recorded_for_gemma2():
    geometry = geometry_from_config(pico_config("gemma2"))
    assert geometry.softcapping == {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
    assert geometry.family.norm_offset_one


def test_unknown_model_type_lists_supported():
    with pytest.raises(UnsupportedArchitectureError) as info:
        geometry_from_config({**pico_config("llama"), "model_type": "gpt2"})
    message = str(info.value)
    assert "'gpt2'" in message
    for model_type in SUPPORTED_MODEL_TYPES:
        assert model_type in message


def test_compatible_fine_tune_passes(pico):
    base = pico("llama", seed=0)
    tuned = pico("llama", seed=1)
    check_compatible(Checkpoint(tuned), Checkpoint(base))


def test_shape_mismatch_lists_first_mismatches(pico):
    base = pico("llama", config_overrides={"intermediate_size": 128})
    tuned = pico("llama")
    with pytest.raises(IncompatibleModelsError) as info:
        check_compatible(Checkpoint(tuned), Checkpoint(base))
    assert "model.layers.0.mlp.down_proj.weight: (32, 64) in model, (32, 128) in base" in str(info.value)
    assert "fine-tuned from" in info.value.hint


def test_other_architecture_and_vocab(pico):
    with pytest.raises(IncompatibleModelsError, match="is a llama model but base .* is a qwen2 model"):
        check_compatible(Checkpoint(pico("llama")), Checkpoint(pico("qwen2")))
    with pytest.raises(IncompatibleModelsError, match="vocabulary of 64 tokens .* has 80"):
        check_compatible(Checkpoint(pico("llama")), Checkpoint(pico("llama", config_overrides={"vocab_size": 80})))


def test_missing_and_extra_tensors(pico, tmp_path):
    from hf_mergeguard.io.safetensors_format import TensorSpec
    from hf_mergeguard.io.writer import write_checkpoint

    source = Checkpoint(pico("llama"))
    layout = dict(source.layout)
    dropped = "model.layers.1.mlp.up_proj.weight"
    del layout[dropped]
    missing = write_checkpoint(
        tmp_path / "missing", ((n, t) for n, t in source.iter_tensors() if n != dropped), layout, companions_from=source
    )
    with pytest.raises(IncompatibleModelsError, match=f"{dropped}: missing"):
        check_compatible(Checkpoint(missing), source)

    extra_layout = {**source.layout, "model.layers.0.mlp.extra.weight": TensorSpec(torch.float32, (4,))}
    extra = write_checkpoint(
        tmp_path / "extra",
        list(source.iter_tensors()) + [("model.layers.0.mlp.extra.weight", torch.ones(4))],
        extra_layout,
        companions_from=source,
    )
    with pytest.raises(IncompatibleModelsError, match="extra.weight: not part of a llama model"):
        check_compatible(Checkpoint(extra), source)
