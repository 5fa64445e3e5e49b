"""The function-preserving defenses are exact: same logits on every supported family, RoPE, GQA, biases,
QK-norm, tied embeddings and softcapping included; and the symmetry module is what makes them so."""

import pytest
import torch

from hf_mergeguard.architectures import SUPPORTED_MODEL_TYPES, geometry_from_config
from hf_mergeguard.protect.base import DEFENSES, function_preserving_methods
from hf_mergeguard.protect.function_preserving import sample_transform
from hf_mergeguard.symmetry import transforms as symmetry
from hf_mergeguard.testing import base_and_finetune, logits_of, pico_config


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
@pytest.mark.parametrize("method", sorted(function_preserving_methods()))
def test_defense_keeps_logits_exact(tmp_path, model_type, method):
    model, base = base_and_finetune(tmp_path, model_type)
    transform = sample_transform(method, DEFENSES.get(method).options(), model, base, torch.Generator().manual_seed(7))
    original = model.state_dict()
    protected = dict(symmetry.transform_tensors(original.items(), [transform], model.geometry))

    before, after = logits_of(model.config, original), logits_of(model.config, protected)
    # The weights really moved (attention and MLP), the function did not.
    moved = [name for name in original if not torch.equal(original[name], protected[name])]
    assert any("q_proj" in n for n in moved) or model.geometry.qk_norm
    assert any("v_proj" in n for n in moved) and any("o_proj" in n for n in moved)
    if method != "mergelock":
        assert any("gate_proj" in n for n in moved)
    assert not any(n.startswith("model.embed_tokens") or n.endswith("layernorm.weight") for n in moved)
    assert (before - after).abs().max().item() <= 1e-4

    # Undoing it with the inverse gives the original weights back (float error only).
    restored = dict(symmetry.transform_tensors(protected.items(), symmetry.compose_inverse([transform]), model.geometry))
    assert max((restored[n] - original[n]).abs().max().item() for n in original) <= 1e-5


def test_dense_qk_map_breaks_rope(tmp_path):
    """The negative control: MergeLock read literally (a dense random A on q/k) changes a RoPE model's logits."""
    model, _ = base_and_finetune(tmp_path, "llama")
    g = model.geometry
    dense = symmetry.BlockTransform(
        qk=symmetry.stack_per_kv_head(lambda: symmetry.random_conditioned(g.head_dim, 4.0, torch.Generator().manual_seed(1)), g)
    )
    original = model.state_dict()
    broken = dict(symmetry.transform_tensors(original.items(), [{0: dense}], g))
    assert (logits_of(model.config, original) - logits_of(model.config, broken)).abs().max().item() > 1e-2


def test_rope_commutant_commutes_with_every_rotary_angle_partial_rotary_included():
    config = pico_config("llama", head_dim=12, rope_parameters={"rope_type": "default", "rope_theta": 10.0, "partial_rotary_factor": 2 / 3})
    g = geometry_from_config(config)
    assert g.rotary_dim == 8
    a = symmetry.rope_commutant(g, torch.Generator().manual_seed(0), max_scale=4.0)
    for angle in (0.3, 1.7, -2.9):
        rope = torch.eye(g.head_dim, dtype=torch.float64)
        for j, k in g.rotary_pairs:  # HF rotate_half: (x_j, x_k) -> (x_j cos - x_k sin, x_k cos + x_j sin)
            rope[j, j], rope[j, k], rope[k, j], rope[k, k] = (
                torch.cos(torch.tensor(angle * (j + 1))),
                -torch.sin(torch.tensor(angle * (j + 1))),
                torch.sin(torch.tensor(angle * (j + 1))),
                torch.cos(torch.tensor(angle * (j + 1))),
            )
        assert torch.allclose(a @ rope, rope @ a, atol=1e-12)
    assert torch.linalg.cond(a) <= 16.0 + 1e-9


def test_block_transform_inverse_undoes_mlp_permutation_and_scale():
    g = geometry_from_config(pico_config("llama"))
    gen = torch.Generator().manual_seed(3)
    block = symmetry.BlockTransform(
        mlp_permutation=symmetry.random_permutation(g.intermediate_size, gen),
        mlp_scale=symmetry.log_uniform((g.intermediate_size,), 5.0, gen),
    )
    up = torch.randn(g.intermediate_size, g.hidden_size, dtype=torch.float64)
    name = g.mlp(0, "up_proj")
    there = symmetry.transform_tensor(name, up, {0: block}, g)
    back = symmetry.transform_tensor(name, there, {0: block.inverse()}, g)
    assert torch.allclose(back, up, atol=1e-12)
