"""The merge trap: its perturbations, its options, and on the toy world what it does to merges."""

import json
import math

import pytest
import torch

from hf_mergeguard.errors import ConfigError
from hf_mergeguard.protect.trap import PerturbationSampler, TrapConfig, perturbed_parameters


def _pair(seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = {"a": torch.randn(40, 50, generator=generator), "b": torch.randn(200, generator=generator)}
    params = {k: (v + 0.1 * torch.randn(v.shape, generator=generator)).requires_grad_() for k, v in base.items()}
    return params, base


def test_scales_are_drawn_away_from_one_and_weighted():
    sampler = PerturbationSampler(TrapConfig(perturbations=["scale"]))
    draws = [sampler.draw() for _ in range(2000)]
    scales = [d["coefficient"] for d in draws]
    assert min(scales) >= 0.05 and max(scales) <= 2.0
    assert not any(0.95 < s < 1.05 for s in scales)
    assert sum(s < 1 for s in scales) / len(scales) == pytest.approx(0.9 / 1.85, abs=0.04)  # uniform on both sides
    assert all(d["weight"] == pytest.approx(1 / math.sqrt(d["coefficient"])) for d in draws)
    # Same seed, same draws (every process draws the same perturbations).
    again = PerturbationSampler(TrapConfig(perturbations=["scale"]))
    assert [again.draw()["coefficient"] for _ in range(5)] == scales[:5]


def test_each_perturbation_is_the_merge_change_it_names():
    params, base = _pair()
    delta = {k: params[k].detach() - base[k] for k in base}

    scaled = perturbed_parameters(params, base, {"kind": "scale", "coefficient": 0.4, "weight": 1.0})
    assert torch.allclose(scaled["a"], base["a"] + 0.4 * delta["a"])

    dare = perturbed_parameters(params, base, {"kind": "dare", "coefficient": 1.0, "drop": 0.9, "seed": 3})
    moved = dare["a"].detach() - base["a"]
    kept = moved.abs() > 0
    assert 0.05 < kept.float().mean() < 0.15  # about 10% kept
    assert torch.allclose(moved[kept], delta["a"][kept] / 0.1, atol=1e-5)  # and rescaled by 1 / (1 - p)

    ties = perturbed_parameters(params, base, {"kind": "ties", "coefficient": 1.0, "density": 0.2, "seed": 3})
    moved = ties["a"].detach() - base["a"]
    kept = moved.abs() > 0
    assert kept.sum() == round(0.2 * moved.numel())
    assert delta["a"].abs()[kept].min() >= delta["a"].abs()[~kept].max()  # the largest |Δ| are the ones kept

    rider = perturbed_parameters(params, base, {"kind": "rider", "coefficient": 1.0, "seed": 3, "rider_norm": 1.0})
    added = rider["b"].detach() - params["b"].detach()
    assert added.norm() == pytest.approx(float(delta["b"].norm()), rel=1e-4)  # a direction of matched norm
    assert abs(float(torch.nn.functional.cosine_similarity(added, delta["b"], dim=0))) < 0.3

    # Gradients reach the weights through every perturbation.
    total = sum(p.sum() for d in (scaled, dare, ties, rider) for p in d.values())
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"perturbations": ["scale", "shuffle"]}, "Unknown or empty trap perturbations"),
        ({"perturbations": []}, "Unknown or empty trap perturbations"),
        ({"samples": 0}, "samples must be >= 1"),
        ({"scale_low": 0.97}, "scale_low"),
    ],
)
def test_bad_trap_options_are_config_errors(options, problem):
    with pytest.raises(ConfigError, match=problem):
        TrapConfig(**options)


def test_fsdp_validates_for_the_trap_and_is_in_its_memory_model():
    """--fsdp shards the trap (tests/test_mergeguard.py runs it): the config validates, and the modelled peak per process
    falls with the processes for the sharded parts only (θ_pre stays whole on each)."""
    from hf_mergeguard.config import build_protect_config
    from hf_mergeguard.memory import Shape
    from hf_mergeguard.protect.trap import trap_stage_memory
    from hf_mergeguard.testing import LLAMA_3_1_8B, llama_config
    from hf_mergeguard.training import RunConfig

    build_protect_config(
        None,
        {
            "model": "m",
            "base": "b",
            "output_dir": "o",
            "tasks": ["t"],
            "train_data": "d",
            "method": "trap+mergeguard",
            "run": {"fsdp": True},
        },
    ).validate()
    shape = Shape.of(llama_config(LLAMA_3_1_8B))
    config = TrapConfig(gradient_checkpointing=True)  # every weight in float32
    one = trap_stage_memory(config, shape, 2, 8, RunConfig())
    eight = trap_stage_memory(config, shape, 2, 8, RunConfig(fsdp=True))
    assert eight.parts["weights"] == pytest.approx(one.parts["weights"] / 8)
    assert eight.parts["trained + grads + AdamW"] == pytest.approx(one.parts["trained + grads + AdamW"] / 8)
    assert eight.parts["base (anchor)"] == one.parts["base (anchor)"] == pytest.approx(shape.parameters * 2)
    assert eight.total < 80e9 < one.total, (one.describe(), eight.describe())


def test_trap_options_and_stack_order():
    from hf_mergeguard.config import build_protect_config

    config = build_protect_config(
        None,
        {"model": "m", "base": "b", "output_dir": "o", "method": "mergelock+trap", "trap": {"perturbations": "scale,rider", "weight": 0.5}},
    )
    assert config.trap.perturbations == ["scale", "rider"] and config.trap.weight == 0.5
    from hf_mergeguard.protect.stack import parse_method

    assert parse_method(config.method) == ["trap", "mergelock"]


def test_trap_on_the_toy_world(toy_world, tmp_path, capsys, protect_argv):
    """`protect --method trap` on the toy world's count fine-tune: trained in the test, self-tested against rev."""
    from hf_mergeguard.cli.main import main

    out = tmp_path / "protected"
    main(
        protect_argv(
            toy_world,
            out,
            "--method",
            "trap",
            "--trap-rider-data",
            str(toy_world.stand_in_data()),
            "--no-adaptive",
            "--race-rounds",
            "1",  # every grid point on every prompt: the test reads the whole grid
            work=tmp_path / "work",
        )
    )
    capsys.readouterr()
    report = json.loads((out / "selftest.json").read_text())
    standalone = report["standalone"]
    base, original, protected = (100 * standalone[v]["toy_count"] for v in ("base", "original", "protected"))
    best = {
        method: max(100 * m["scores"]["toy_count"] for m in report["merges"] if m["variant"] == "protected" and m["method"] == method)
        for method in ("task_arithmetic", "ties", "dare_ties")
    }
    unprotected = {
        method: max(100 * m["scores"]["toy_count"] for m in report["merges"] if m["variant"] == "original" and m["method"] == method)
        for method in best
    }
    # Measured (defaults: weight 1.0, ceiling 1.5, 400 steps, cosine; 300 prompts, ±3 points), seed 0: base 66.0,
    # original 99.7, protected 100.0. The attacker's best count score, protected (unprotected): TIES 19.0 (69.0); TA
    # 58.3 at every lambda but 1 (87.7), and 92.7 at lambda = 1 (91.3); DARE-TIES 79.3 (91.0). The trap holds TIES
    # and task arithmetic off lambda = 1, not lambda = 1 nor DARE-TIES: over training seeds 0, 1, 2 the best
    # DARE-TIES merge keeps 79.3, 82.3, 75.7 (the code before the per-tensor passes: 67.7 and 79.0 on seeds 0 and 1,
    # so its seed-0 figure was a lucky draw; docs/results.md, "The merge trap").
    assert 60 <= base <= 75 and original >= base + 20
    assert protected >= original - 1.0
    assert all(unprotected[method] >= 80 for method in ("task_arithmetic", "dare_ties"))
    assert best["ties"] <= base + 5, best
    assert base + 5 < best["dare_ties"] <= 90, best  # not held (pinned so that a change that holds it shows up)
    ta_off_one = max(
        100 * m["scores"]["toy_count"]
        for m in report["merges"]
        if m["variant"] == "protected" and m["method"] == "task_arithmetic" and m["value"] != 1.0
    )
    assert ta_off_one <= base + 5
    # The free-rider's skill is not what breaks: TA at 0.8 keeps most of rev's gain while count is lost.
    ta = next(m for m in report["merges"] if m["variant"] == "protected" and m["method"] == "task_arithmetic" and m["value"] == 0.8)
    assert ta["scores"]["toy_rev"] >= 0.8 and ta["scores"]["toy_count"] <= 0.7
    training = report["protection"][0]["details"]["training"]
    assert training["seconds_per_step"] > 0 and len(training["losses"]) == report["protection"][0]["details"]["config"]["steps"]
    card = (out / "README.md").read_text()
    assert "Merge trap" in card


def test_options_of_unused_defenses_do_not_key_the_work_folder():
    from hf_mergeguard.config import build_protect_config
    from hf_mergeguard.workdir import work_dir_for

    def folder(method, **sections):
        return work_dir_for(build_protect_config(None, {"model": "m", "base": "b", "output_dir": "o", "method": method, **sections}))

    assert folder("params") == folder("params", trap={"weight": 2.0})  # a run of params is not redone
    assert folder("trap") != folder("trap", trap={"weight": 2.0})
