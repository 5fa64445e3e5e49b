"""Merges are mergekit's: checked against hand-computed tensors, the YAML path, and the registry."""

import pytest
import torch
import yaml

from hf_mergeguard.attacks.merges import (
    MERGE_METHODS,
    get_merge_method,
    merge_state_dict,
    parse_methods,
    tensor_seed,
)
from hf_mergeguard.errors import ConfigError, UnknownNameError
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.mergekit_yaml import run_mergekit_config


@pytest.fixture
def trio(pico):
    base = pico("llama", seed=0)
    defender = pico("llama", seed=1, like=base, noise=0.05)
    rider = pico("llama", seed=2, like=base, noise=0.05)
    return Checkpoint(base), Checkpoint(defender), Checkpoint(rider)


def _ties_by_hand(base, deltas, density, lam=1.0, dare_masks=None):
    trimmed = []
    for index, delta in enumerate(deltas):
        if dare_masks is None:  # TIES: keep the top-density entries by magnitude
            k = max(1, int(density * delta.numel()))
            keep = torch.zeros(delta.numel())
            keep[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1
            trimmed.append(delta * keep.reshape(delta.shape))
        else:  # DARE: random drop, then rescale to the same L1 norm
            kept = delta * dare_masks[index]
            trimmed.append(kept * (delta.abs().sum() / kept.abs().sum()))
    stacked = torch.stack(trimmed)
    majority = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = stacked.sign() == majority
    mixed = (stacked * agree).sum(0)
    if dare_masks is None:  # TIES normalizes by the number of agreeing inputs
        divisor = agree.float().sum(0)
        divisor[divisor == 0] = 1
        mixed = mixed / divisor
    return base + lam * mixed


def test_ties_matches_hand_computation(trio):
    base, defender, rider = trio
    merged = merge_state_dict(get_merge_method("ties"), 0.3, base=base, defender=defender, freeriders=[rider])
    for name in ["model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"]:
        deltas = [defender.get(name) - base.get(name), rider.get(name) - base.get(name)]
        expected = _ties_by_hand(base.get(name), deltas, density=0.3)
        torch.testing.assert_close(merged[name], expected, rtol=1e-6, atol=1e-6)


def test_dare_ties_matches_hand_computation_and_is_seeded(trio):
    base, defender, rider = trio
    method = get_merge_method("dare_ties")
    merged = merge_state_dict(method, 0.5, base=base, defender=defender, freeriders=[rider], seed=7)
    again = merge_state_dict(method, 0.5, base=base, defender=defender, freeriders=[rider], seed=7)
    other = merge_state_dict(method, 0.5, base=base, defender=defender, freeriders=[rider], seed=8)
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(merged[name], again[name])
    assert not torch.equal(merged[name], other[name])
    deltas = [defender.get(name) - base.get(name), rider.get(name) - base.get(name)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tensor_seed(7, name))
        masks = [torch.bernoulli(torch.full_like(d, 0.5)) for d in deltas]
    expected = _ties_by_hand(base.get(name), deltas, density=0.5, dare_masks=masks)
    torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)


def test_task_arithmetic_linear_slerp_endpoints(trio):
    base, defender, rider = trio
    name = "model.layers.0.self_attn.v_proj.weight"
    ta = merge_state_dict(get_merge_method("task_arithmetic"), 0.5, base=base, defender=defender, freeriders=[rider])
    expected = base.get(name) + 0.5 * ((defender.get(name) - base.get(name)) + (rider.get(name) - base.get(name)))
    torch.testing.assert_close(ta[name], expected)
    linear = merge_state_dict(get_merge_method("linear"), 0.7, base=base, defender=defender, freeriders=[rider])
    torch.testing.assert_close(linear[name], 0.7 * defender.get(name) + 0.3 * rider.get(name))
    for t, endpoint in [(0.0, defender), (1.0, rider)]:
        slerp = merge_state_dict(get_merge_method("slerp"), t, base=base, defender=defender, freeriders=[rider])
        torch.testing.assert_close(slerp[name], endpoint.get(name), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", MERGE_METHODS.names())
def test_every_method_merges_every_grid_point(trio, method):
    base, defender, rider = trio
    spec = get_merge_method(method)
    for value in spec.values():
        merged = merge_state_dict(spec, value, base=base, defender=defender, freeriders=[rider])
        assert set(merged) == set(defender.tensor_names)
        assert all(torch.isfinite(t).all() for t in merged.values())


def test_every_mergekit_method_is_an_attack():
    """Every method in mergekit's registry merges the defender with a free-rider in the self-test (passthrough as
    the layer swap: same-depth slices of the two models)."""
    from mergekit.merge_methods import registered_methods

    ours = set(MERGE_METHODS.names()) - {"layer_swap"} | {"passthrough"}
    assert {method.spec.name for method in registered_methods()} == ours


def test_a_layer_swap_takes_the_first_blocks_from_the_defender(trio):
    base, defender, rider = trio
    merged = merge_state_dict(get_merge_method("layer_swap"), 0.5, base=base, defender=defender, freeriders=[rider])
    cut = defender.geometry.num_layers // 2
    for name, tensor in merged.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        source = defender if layer is not None and layer < cut else rider
        assert torch.equal(tensor, source.get(name)), name


def test_method_typo_suggests():
    with pytest.raises(UnknownNameError) as info:
        parse_methods("ties,dare_tie")
    assert "Did you mean 'dare_ties'" in str(info.value)
    defaults = [m.name for m in parse_methods(None)]
    assert len(defaults) == 13 and "nearswap" not in defaults and "sce" in defaults
    assert len(parse_methods("all")) == len(parse_methods(None, thorough=True)) == len(MERGE_METHODS.names()) == 20


def test_mergekit_yaml_path_equals_in_memory(trio, tmp_path):
    """`hf-mergeguard merge` runs mergekit's run_merge; it agrees with our per-tensor merge."""
    base, defender, rider = trio
    config = {
        "merge_method": "ties",
        "base_model": str(base.path),
        "models": [
            {"model": str(defender.path), "parameters": {"density": 0.5, "weight": 1.0}},
            {"model": str(rider.path), "parameters": {"density": 0.5, "weight": 1.0}},
        ],
        "dtype": "float32",
    }
    path = tmp_path / "ties.yml"
    path.write_text(yaml.safe_dump(config))
    out = run_mergekit_config(path, tmp_path / "merged")
    on_disk = Checkpoint(out)
    in_memory = merge_state_dict(get_merge_method("ties"), 0.5, base=base, defender=defender, freeriders=[rider])
    for name, tensor in on_disk.iter_tensors():
        torch.testing.assert_close(tensor, in_memory[name], rtol=1e-6, atol=1e-7)
    # Rewriting an input at the same path and merging again must not read stale weights.
    config["models"][0]["parameters"]["density"] = 1.0
    path.write_text(yaml.safe_dump(config))
    out2 = Checkpoint(run_mergekit_config(path, tmp_path / "merged2"))
    assert not torch.equal(out2.get("model.layers.0.mlp.up_proj.weight"), on_disk.get("model.layers.0.mlp.up_proj.weight"))


def test_bad_merge_configs(tmp_path):
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("merge_method: ties\nmodels: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        run_mergekit_config(bad_yaml, tmp_path / "out")
    typo = tmp_path / "typo.yml"
    typo.write_text("merge_method: tie\nmodels: []\n")
    with pytest.raises(UnknownNameError, match="Did you mean 'ties'"):
        run_mergekit_config(typo, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_thorough_varies_the_weights_lambda_and_seed_one_at_a_time(trio):
    """--thorough: the free-rider's and the defender's weights apart, TIES's lambda, two more seeds of a random method;
    each is mergekit's math with those parameters."""
    base, defender, rider = trio
    ta = get_merge_method("task_arithmetic")
    assert ta.extras() == [{}] and ta.extras(True) == [{}, {"rider_weight": 0.5}, {"defender_weight": 1.5}]
    assert {"lambda": 1.5} in get_merge_method("ties").extras(True) and {"seed": 2} in get_merge_method("dare_ties").extras(True)
    name = "model.layers.0.mlp.up_proj.weight"
    merged = merge_state_dict(ta, 1.0, base=base, defender=defender, freeriders=[rider], extra={"rider_weight": 0.5})
    by_hand = base.get(name) + (defender.get(name) - base.get(name)) + 0.5 * (rider.get(name) - base.get(name))
    torch.testing.assert_close(merged[name], by_hand, rtol=1e-5, atol=1e-6)
    dare = get_merge_method("dare_ties")
    one = merge_state_dict(dare, 0.5, base=base, defender=defender, freeriders=[rider], seed=7)
    again = merge_state_dict(dare, 0.5, base=base, defender=defender, freeriders=[rider], seed=7, extra={})
    other = merge_state_dict(dare, 0.5, base=base, defender=defender, freeriders=[rider], seed=7, extra={"seed": 1})
    assert torch.equal(one[name], again[name]) and not torch.equal(one[name], other[name])
