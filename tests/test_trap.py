"""The merge trap: its perturbations, its options, and on the toy world what it does to merges."""

import json
import math

import pytest
import torch

from hf_mergeguard.errors import ConfigError
from hf_mergeguard.protect.trap import PERTURBATIONS, PerturbationSampler, TrapConfig, perturbed_parameters


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


def test_the_attack_family_perturbations_are_the_changes_they_name():
    """DELLA's ranked drops, low-rank truncation, per-tensor coefficients, several stand-ins of several ranks."""
    params, base = _pair()
    delta = {k: params[k].detach() - base[k] for k in base}

    della = perturbed_parameters(params, base, {"kind": "della", "coefficient": 1.0, "drop": 0.6, "epsilon": 0.3, "seed": 5})
    moved = della["a"].detach() - base["a"]
    kept = moved.abs() > 0
    # Ranked within each row, as mergekit's della_magprune: kept with 1 - p - ε + 2ε·rank, then divided by that.
    rank = delta["a"].abs().argsort(dim=1).argsort(dim=1).float() / (delta["a"].shape[1] - 1)
    keep_probability = 1 - 0.6 - 0.3 + 2 * 0.3 * rank
    assert torch.allclose(moved[kept], (delta["a"] / keep_probability)[kept], rtol=1e-4)
    small, large = kept[rank < 0.1].float().mean(), kept[rank > 0.9].float().mean()
    assert small < 0.25 and large > 0.55  # about 0.13 and 0.67 kept at the two ends
    assert kept.float().mean() == pytest.approx(0.4, abs=0.05)

    low = perturbed_parameters(params, base, {"kind": "lowrank", "coefficient": 1.0, "rank_share": 0.1, "seed": 5})
    moved = low["a"].detach() - base["a"]
    assert torch.linalg.matrix_rank(moved) == 4  # a tenth of rank 40
    exact = torch.linalg.svd(delta["a"], full_matrices=False)
    best = exact.U[:, :4] @ torch.diag(exact.S[:4]) @ exact.Vh[:4]
    assert torch.allclose(moved, best, atol=1e-4)  # the best rank-4 approximation (Eckart-Young)
    assert torch.equal(low["b"].detach() - base["b"], delta["b"])  # vectors kept whole

    layer = perturbed_parameters(
        params,
        base,
        {"kind": "layerwise", "coefficient": 1.0, "seed": 5, "range": (0.3, 1.5), "rider_range": (0.5, 0.5), "rider_norm": 0.0},
    )
    ratios = [float((layer[k].detach() - base[k]).norm() / delta[k].norm()) for k in ("a", "b")]
    assert all(0.3 <= r <= 1.5 for r in ratios) and abs(ratios[0] - ratios[1]) > 1e-3  # one coefficient per tensor

    # Stacked stand-in vectors: a draw takes the one it names, scaled.
    stand_ins = {k: torch.stack([torch.ones_like(v), 2 * torch.ones_like(v)]) for k, v in base.items()}
    rider = perturbed_parameters(params, base, {"kind": "rider", "coefficient": 1.0, "rider_scale": 0.5, "rider_index": 1}, stand_ins)
    assert torch.allclose(rider["b"].detach() - params["b"].detach(), torch.ones_like(base["b"]))
    # A random direction of rank 2 and half the norm of the tensor's change.
    random = perturbed_parameters(params, base, {"kind": "rider", "coefficient": 1.0, "seed": 3, "rider_norm": 0.5, "rider_rank": 2})
    added = random["a"].detach() - params["a"].detach()
    assert torch.linalg.matrix_rank(added) == 2 and added.norm() == pytest.approx(0.5 * float(delta["a"].norm()), rel=1e-4)

    total = sum(p.sum() for d in (della, low, layer) for p in d.values())
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


def test_the_finetune_term_takes_inner_steps_on_the_merged_model(tmp_path):
    """A finetune draw: the inner steps lower the merged model's loss (the attacker's move), then the trap's loss is
    taken there; a few trap steps with every term run and keep the weights finite."""
    from hf_mergeguard.losses import mean_token_loss
    from hf_mergeguard.protect.trap import merge_trap_finetune
    from hf_mergeguard.testing import base_and_finetune, token_batch
    from hf_mergeguard.toyworld.skills import make_tokenizer
    from hf_mergeguard.trained_change import TrainedModel

    tuned, base = base_and_finetune(tmp_path, "llama")
    model = tuned.load_model(dtype=torch.float32)
    inputs = token_batch()
    trained = TrainedModel(model, base.state_dict())
    draw = {"kind": "rider", "coefficient": 0.8, "seed": 1, "rider_norm": 1.0, "inner_mode": "full", "inner_lr": 1e-3}
    losses = []
    for mode in ("full", "lora"):
        draw["inner"] = trained.inner_shifts(mode, seed=1, rank=4)
        tensors = [t for shift in draw["inner"].values() for t in shift.parameters()]
        with trained.pass_with(draw):
            before = mean_token_loss(model(input_ids=inputs).logits, inputs)
        gradients = iter(torch.autograd.grad(before, tensors, allow_unused=True))
        for shift in draw["inner"].values():
            shift.step([next(gradients) for _ in shift.parameters()], 1e-3)
        with torch.no_grad(), trained.pass_with(draw):
            after = mean_token_loss(model(input_ids=inputs).logits, inputs)
        losses.append((float(before.detach()), float(after)))
    trained.release()
    assert all(after < before for before, after in losses), losses

    from hf_mergeguard.training import Example

    examples = [Example("count abcab\n", "#### 2")] * 8
    config = TrapConfig(steps=2, batch_size=4, perturbations=["finetune", "della", "lowrank", "layerwise"], samples=4)
    model = tuned.load_model(dtype=torch.float32)
    merge_trap_finetune(model, make_tokenizer(), examples, config, base_state=base.state_dict(), progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


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
    """`protect` at its defaults (the merge trap) on the toy world's count fine-tune: trained in the test, self-tested
    against rev."""
    from hf_mergeguard.cli.main import main

    out = tmp_path / "protected"
    main(
        protect_argv(
            toy_world,
            out,
            "--no-adaptive",
            "--race-rounds",
            "1",  # every grid point on every prompt: the test reads the whole grid
            work=tmp_path / "work",
            method=None,  # protect's default: the trap, its stand-in free-rider the world's copy rows (auto)
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
    # Measured (the defaults since issue 22: every perturbation of the attack family, della ranked per row as mergekit
    # ranks it, the stand-in copy's rows found by --trap-rider-data auto; weight 1.0, ceiling 1.5, 400 steps, cosine;
    # 300 prompts, ±3 points), seed 0: base 66.0, original 99.7, protected 99.0. The attacker's best count score,
    # protected (unprotected): TIES 29.0 (69.0); TA 61.3 at every lambda but 1 (87.7), and 83.7 at lambda = 1 (91.3);
    # DARE-TIES 71.0 (91.0), at the goal's bound, base + 5. The trap holds TIES, task arithmetic off lambda = 1 and
    # DARE-TIES at the bound, not lambda = 1. (With della ranked over the whole tensor: TIES 32.7, TA at 1 91.3,
    # DARE-TIES 80.7. Issue 19's defaults, scale, dare, ties and rider only: TIES 19.0, TA off 1 58.3, at 1 92.7,
    # DARE-TIES 79.3 on seed 0 and 82.3, 75.7 on seeds 1, 2; docs/results.md, "The merge trap against the attack family".)
    assert 60 <= base <= 75 and original >= base + 20
    assert protected >= original - 1.0
    assert all(unprotected[method] >= 80 for method in ("task_arithmetic", "dare_ties"))
    assert best["ties"] <= base + 5, best
    assert best["dare_ties"] <= base + 8, best  # at the bound (pinned so that a change that loses it shows up)
    ta_off_one = max(
        100 * m["scores"]["toy_count"]
        for m in report["merges"]
        if m["variant"] == "protected" and m["method"] == "task_arithmetic" and m["value"] != 1.0
    )
    assert ta_off_one <= base + 5
    # The free-rider's skill is not what breaks: TA at 0.8 keeps most of rev's gain while count is lost.
    ta = next(m for m in report["merges"] if m["variant"] == "protected" and m["method"] == "task_arithmetic" and m["value"] == 0.8)
    assert ta["scores"]["toy_rev"] >= 0.8 and ta["scores"]["toy_count"] <= 0.7
    protection = report["protection"][0]
    assert report["method"] == "trap" and protection["warnings"] == []  # the default, in its strong setting
    # The world's stand-in rows: its own file when the world has one, else written into the work folder.
    assert protection["details"]["config"]["rider_data"].endswith(("data/copy/train.jsonl", "stand-in-copy.jsonl"))
    assert protection["public_parameters"]["stand-in free-riders"].endswith(".jsonl (fine-tuned from the base)")
    assert protection["details"]["config"]["perturbations"] == list(PERTURBATIONS)
    training = protection["details"]["training"]
    assert training["seconds_per_step"] > 0 and len(training["losses"]) == protection["details"]["config"]["steps"]
    card = (out / "README.md").read_text()
    assert "Merge trap" in card and "**Warning:**" not in card


def test_options_of_unused_defenses_do_not_key_the_work_folder():
    from hf_mergeguard.config import build_protect_config
    from hf_mergeguard.workdir import work_dir_for

    def folder(method, **sections):
        return work_dir_for(build_protect_config(None, {"model": "m", "base": "b", "output_dir": "o", "method": method, **sections}))

    assert folder("params") == folder("params", trap={"weight": 2.0})  # a run of params is not redone
    assert folder("trap") != folder("trap", trap={"weight": 2.0})


def test_stand_in_free_riders_come_from_somewhere_sensible_without_flags(tmp_path):
    """``--trap-rider-data auto``: a toy world's stand-in rows (written into the work folder, never into the world),
    else the Hub default, else random directions with a warning for the log and the card."""
    import dataclasses

    from hf_mergeguard.protect.trap import RANDOM, resolve_rider_data
    from hf_mergeguard.toyworld.build import SECOND_WORLD

    world = tmp_path / "world"
    (world / "models" / "base").mkdir(parents=True)
    (world / "world.json").write_text(json.dumps({"config": dataclasses.asdict(SECOND_WORLD)}))
    work = tmp_path / "work"
    resolved, warning = resolve_rider_data(TrapConfig(), world / "models" / "base", work)
    assert warning is None and resolved.rider_sources() == [str(work / "stand-in-alt.jsonl")]
    first = json.loads((work / "stand-in-alt.jsonl").read_text().splitlines()[0])
    assert first["prompt"].startswith("q: alt of ") and not (world / "data").exists()

    resolved, warning = resolve_rider_data(TrapConfig(), tmp_path / "elsewhere", work)  # offline (conftest): no Hub default
    assert resolved.rider_data == RANDOM and resolved.rider_sources() == []
    assert "random directions only" in warning and "tatsu-lab/alpaca" in warning and "--trap-rider-data" in warning
    assert resolve_rider_data(TrapConfig(perturbations=["scale", "dare"]), tmp_path, work) == (
        TrapConfig(perturbations=["scale", "dare"], rider_data=RANDOM),
        None,
    )
    given = TrapConfig(rider_data="a.jsonl, b.jsonl")
    assert resolve_rider_data(given, tmp_path, work) == (given, None) and given.rider_sources() == ["a.jsonl", "b.jsonl"]
    assert given.rider_count() == 2 and TrapConfig().rider_count() == 1 and TrapConfig(rider_data=RANDOM).rider_count() == 0
