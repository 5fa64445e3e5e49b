"""MergeGuard stage 2 math on small tensors: the exact global top-k, the negation, the units."""

import math

import pytest
import torch

from hf_mergeguard.architectures import geometry_from_config
from hf_mergeguard.protect.mergeguard.negation import excluded_count, negate, negation_units, topk_threshold
from hf_mergeguard.testing import pico_config


def test_topk_threshold_is_exact_over_several_tensors():
    generator = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(shape, generator=generator).abs() * scale for shape, scale in [((50, 40), 1.0), ((300,), 1e-3), ((7, 9, 11), 30.0)]
    ]
    for share in (0.001, 0.1, 0.37, 1.0):
        threshold, count = topk_threshold(lambda: iter(tensors), share)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        expected = math.floor(share * flat.numel())
        assert count == expected
        assert int((flat >= threshold).sum()) == expected
        assert threshold == float(torch.topk(flat, expected).values[-1])
    assert topk_threshold(lambda: iter(tensors), 0.0) == (math.inf, 0)


def test_negate_resets_with_beta_1_and_flips_with_beta_2():
    base = torch.tensor([1.0, 2.0, 3.0, 4.0])
    theta = torch.tensor([1.5, 2.0, 1.0, 4.1])  # tau = [0.5, 0, -2, 0.1]
    reset, count = negate(theta, base, threshold=0.5, beta=1.0)
    assert count == 2
    assert torch.equal(reset, torch.tensor([1.0, 2.0, 3.0, 4.1]))  # the masked entries are the base's
    flipped, _ = negate(theta, base, threshold=0.5, beta=2.0)
    assert torch.allclose(flipped, torch.tensor([0.5, 2.0, 5.0, 4.1]))  # base - tau
    bf16, _ = negate(theta.bfloat16(), base.bfloat16(), threshold=0.5, beta=1.0)
    assert bf16.dtype == torch.bfloat16


def test_units_exclude_embeddings_norm_and_lm_head():
    geometry = geometry_from_config(pico_config("llama"))
    names = geometry.expected_tensor_names()
    per_matrix = negation_units(geometry, names, "matrix")
    per_block = negation_units(geometry, names, "block")
    assert len(per_matrix) == len(names) - 3
    assert all(name.startswith("model.layers.") for name in per_matrix)
    assert set(per_block) == {"model.layers.0", "model.layers.1"}
    assert sum(len(v) for v in per_block.values()) == len(per_matrix)
    with pytest.raises(ValueError):
        negation_units(geometry, names, "row")


def test_excluded_count():
    assert excluded_count(36, 0.1) == 4
    assert excluded_count(5, 0.1) == 1
    assert excluded_count(36, 0.0) == 0


def test_negate_in_chunks_equals_the_formula(monkeypatch):
    from hf_mergeguard.protect.mergeguard import negation

    generator = torch.Generator().manual_seed(3)
    base = torch.randn(37, 29, generator=generator).bfloat16()
    theta = (base.float() + 0.1 * torch.randn(37, 29, generator=generator)).bfloat16()
    tau = theta.float() - base.float()
    expected = torch.where(tau.abs() >= 0.1, theta.float() - 2.0 * tau, theta.float()).bfloat16()
    monkeypatch.setattr(negation, "_CHUNK", 100)  # 11 chunks, the last one short
    chunked, count = negate(theta, base, threshold=0.1, beta=2.0)
    assert torch.equal(chunked, expected)
    assert count == int((tau.abs() >= 0.1).sum())
