"""Adaptive attacks on models protected in the toy world: re-alignment undoes the function-preserving defenses."""

import json
from pathlib import Path

import pytest
import torch

from hf_mergeguard.attacks.realign import realigned_tensors
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.io.sources import StateDictSource
from hf_mergeguard.protect.base import DEFENSES
from hf_mergeguard.protect.function_preserving import sample_transform
from hf_mergeguard.symmetry import transforms as symmetry


def _relative_distance(a: dict, b: dict) -> float:
    """The worst tensor's ||a - b|| / ||b||."""
    return max(((a[n].double() - b[n].double()).norm() / b[n].double().norm()).item() for n in b)


@pytest.mark.parametrize("method", ["params", "mergelock"])
def test_realign_recovers_the_original_weights_and_the_merge_regains_the_skill(toy_world, method):
    from hf_mergeguard.selftest.check import check_model
    from hf_mergeguard.selftest.config import SelfTestConfig

    model, base = Checkpoint(toy_world.model("count")), Checkpoint(toy_world.base)
    original = model.state_dict()
    transform = sample_transform(method, DEFENSES.get(method).options(), model, base, torch.Generator().manual_seed(0))
    protected = StateDictSource(dict(symmetry.transform_tensors(original.items(), [transform], model.geometry)), model.config)
    realigned = StateDictSource(dict(realigned_tensors(protected, base)), model.config, source="realigned")

    # Measured: protected 11.3 (params) / 2.5 (mergelock) away from the original, re-aligned 0.073 (both): the
    # v_proj/o_proj least squares absorb part of the fine-tune (head_dim 32 of a 128-wide residual stream here).
    assert _relative_distance(protected.state_dict(), original) > 1.0
    assert _relative_distance(realigned.state_dict(), original) < 0.1

    config = SelfTestConfig(methods=["dare_ties"], limit=100, batch_size=128)
    kept = {}
    for name, source in (("protected", protected), ("realigned", realigned)):
        report = check_model(
            source,
            base,
            config,
            tasks=["toy_count"],
            include_tasks=[str(toy_world.tasks)],
            merge_with=[str(toy_world.model("rev"))],
            freerider_tasks=["toy_rev"],
            progress=False,
        )
        kept[name] = {m: report.best[m]["protected"].defender_kept for m in report.best}
        if name == "realigned":
            assert report.standalone["protected"]["toy_count"] >= 0.98  # the original's score: re-aligning is exact
            assert all(report.best[m]["protected"].freerider_constraint_met for m in report.best)
    # Measured here (100 prompts): protected -1.50 (below the base) for both defenses, re-aligned 0.78 for both, as much
    # as an unprotected DARE-TIES merge keeps (0.75).
    assert kept["protected"]["dare_ties"] < 0
    assert kept["realigned"]["dare_ties"] >= 0.7


def test_realign_shares_its_blocks_over_processes(pico_world, tmp_path, torchrun):
    """Under torchrun (2 CPU processes over gloo) each block is aligned once, by one process, and every process ends
    with the same re-aligned tensors as one process alone."""
    from safetensors.torch import load_file

    from hf_mergeguard.io.writer import write_checkpoint

    model, base = Checkpoint(pico_world.model("count")), Checkpoint(pico_world.base)
    transform = sample_transform("params", DEFENSES.get("params").options(), model, base, torch.Generator().manual_seed(0))
    protected = StateDictSource(dict(symmetry.transform_tensors(model.state_dict().items(), [transform], model.geometry)), model.config)
    write_checkpoint(tmp_path / "protected", protected.iter_tensors(), model.layout, companions_from=model)
    alone = dict(realigned_tensors(Checkpoint(tmp_path / "protected"), base))
    script = str(Path(__file__).parent / "distributed_realign.py")
    done = torchrun(script, str(tmp_path / "protected"), str(pico_world.base), str(tmp_path / "shared.safetensors"), str(tmp_path / "log"))
    assert done.returncode == 0, done.stderr[-3000:]
    aligned = sorted(int(line.split()[1]) for line in (tmp_path / "log").read_text().splitlines())
    assert aligned == list(range(model.geometry.num_layers))  # each block once, by one of the processes
    shared = load_file(tmp_path / "shared.safetensors")
    assert shared.keys() == alone.keys() and all(torch.equal(shared[name], alone[name]) for name in alone)
    assert _relative_distance(alone, model.state_dict()) < _relative_distance(protected.state_dict(), model.state_dict())


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_signrestore_returns_a_negated_release_to_the_original(toy_world, beta):
    """MergeGuard's negation with beta >= 2 keeps magnitudes: from the base and the release alone (and the settings
    the release publishes) the original comes back exactly; blind (no record: every block tensor, the defaults), every
    negated entry is restored and only the tensors kept as critical are touched wrongly."""
    from hf_mergeguard.attacks.signrestore import sign_restored
    from hf_mergeguard.protect.mergeguard import negated_tensors, negation_thresholds
    from hf_mergeguard.protect.mergeguard.negation import negation_units

    model, base = Checkpoint(toy_world.model("count")), Checkpoint(toy_world.base)
    original = model.state_dict()
    units = negation_units(model.geometry, model.tensor_names)
    excluded = sorted(units)[:4:2]  # two "critical" tensors left alone, as criticality would
    names = [name for unit, members in units.items() if unit not in excluded for name in members]
    counts = {}
    thresholds = negation_thresholds(model, base, names, 0.1)
    protected = StateDictSource(dict(negated_tensors(model, base, thresholds, beta, counts)), model.config)
    assert _relative_distance(protected.state_dict(), original) > 0.05

    settings = {"beta": beta, "mask_share": 0.1, "mask_scope": "global", "granularity": "matrix", "excluded_units": excluded}
    settings["negated_entries"] = sum(counts.values())  # published with the rest (entries tied at the threshold)
    restored, flipped = sign_restored(protected, base, settings)
    assert flipped == sum(counts.values())
    worst = max((restored.get(name) - original[name]).abs().max().item() for name in original)
    assert worst < 1e-6  # measured: 1.2e-7 (beta 2), float32 rounding

    blind, _ = sign_restored(protected, base, {**settings, "excluded_units": [], "negated_entries": None})
    negated = {name: (protected.get(name) - original[name]).abs() > 1e-6 for name in original}
    wrong = {name: (blind.get(name) - original[name]).abs() > 1e-6 for name in original}
    unrestored = sum(int((negated[name] & wrong[name]).sum()) for name in original)
    elsewhere = sum(int(wrong[name].sum()) for name in original if name not in excluded)
    # Measured (55,796 negated entries): beta 2: 9 left negated, 9 wrong flips outside the two critical tensors, 3,297
    # in them (the top-k share over more tensors cuts a little higher); beta 3: 0, 0 and 3,288 (the magnitudes of
    # the negated entries, 2|tau'|, stand clear of the rest).
    assert unrestored <= 0.001 * sum(counts.values()) and elsewhere <= 0.001 * sum(counts.values())
    assert sum(int(wrong[name].sum()) for name in excluded) > 1000  # the critical tensors' largest entries: flipped


def test_signrestore_reads_what_the_release_publishes(tmp_path):
    """Published settings when the release has a record; blind defaults without one; no attack on a release whose
    record has no negation to undo (other defenses, or beta = 1: the masked entries are the base's)."""
    from types import SimpleNamespace

    from hf_mergeguard.attacks.signrestore import published_negation
    from hf_mergeguard.report.schema import ProtectionRecord

    config = {"beta": 2.0, "mask_share": 0.05, "mask_scope": "tensor", "granularity": "block"}
    negation = {"excluded_units": ["model.layers.0"], "negated_entries": 99}

    def ctx(records, source=tmp_path):
        return SimpleNamespace(report=SimpleNamespace(protection=records), protected=SimpleNamespace(source=str(source)))

    settings, source = published_negation(ctx([ProtectionRecord("mergeguard", {}, {"config": config, "negation": negation})]))
    assert settings == {**config, **negation} and source.startswith("published")
    settings, source = published_negation(ctx(None))
    assert settings["beta"] == 2.0 and settings["mask_share"] == 0.1 and settings["excluded_units"] == [] and source.startswith("blind")
    assert published_negation(ctx([ProtectionRecord("trap", {}, {})]))[0] is None
    one = ProtectionRecord("mergeguard", {}, {"config": {**config, "beta": 1.0}, "negation": negation})
    assert published_negation(ctx([one])) == (None, "the release's negation has beta = 1: its masked entries are the base's")
    # `check` / `attack` on a release folder: its selftest.json is the record.
    record = {"method": "mergeguard", "details": {"config": config, "negation": negation}}
    (tmp_path / "selftest.json").write_text(json.dumps({"protection": [record]}))
    assert published_negation(ctx(None))[0] == {**config, **negation}


def test_attack_command_realigns_a_protected_release(toy_world, tmp_path, capsys):
    """``hf-mergeguard attack --kind realign`` on a MergeLock release: exit 1, the attack defeats it."""
    from hf_mergeguard.cli.main import main

    out = tmp_path / "protected"
    common = [
        "--base",
        str(toy_world.base),
        "--tasks",
        "toy_count",
        "--include-tasks",
        str(toy_world.tasks),
        "--merge-with",
        str(toy_world.model("rev")),
        "--freerider-tasks",
        "toy_rev",
        "--methods",
        "dare_ties",
        "--limit",
        "100",
        "--batch-size",
        "128",
    ]
    # DARE-TIES alone (no TA at lambda = 1): MergeLock passes every gate of the plain self-test.
    assert (
        main(["protect", str(toy_world.model("count")), "--method", "mergelock", "--no-adaptive", "--output-dir", str(out), *common]) == 0
    )
    capsys.readouterr()
    assert main(["attack", str(out), "--kind", "realign", "--output-dir", str(tmp_path / "attack"), *common]) == 1
    printed = capsys.readouterr().out
    assert "realign" in printed and "defeats the protection: yes" in printed
    report = json.loads((tmp_path / "attack" / "attack.json").read_text())
    realign = report["robustness"]["attacks"]["realign"]["best"]
    assert realign["defender_kept"] >= 0.7  # measured 0.78 (100 prompts): as much as an unprotected merge (0.75)
    assert (tmp_path / "attack" / "realigned" / "model.safetensors").is_file()


def test_lowrank_is_the_best_rank_r_task_vector_and_the_release_at_full_rank(toy_world):
    """mergekit-extract-lora's truncation: each block matrix's task vector cut to rank r (its error is the SVD's tail,
    Eckart-Young); at full rank the model is the release itself, so its merges are the plain merges."""
    from hf_mergeguard.attacks.lowrank import low_rank_model
    from hf_mergeguard.attacks.merges import get_merge_method, merge_state_dict

    model, base, rider = Checkpoint(toy_world.model("count")), Checkpoint(toy_world.base), Checkpoint(toy_world.model("rev"))
    name = "model.layers.1.mlp.up_proj.weight"
    tau = model.get(name).double() - base.get(name).double()
    singular = torch.linalg.svdvals(tau)
    cut = low_rank_model(model, base, 8)
    error = (cut.get(name).double() - base.get(name).double() - tau).norm().item()
    assert error == pytest.approx(singular[8:].norm().item(), rel=0.01)
    assert torch.linalg.matrix_rank(cut.get(name).double() - base.get(name).double(), atol=1e-5) == 8
    assert torch.equal(cut.get("model.norm.weight"), model.get("model.norm.weight"))  # kept as released

    full = low_rank_model(model, base, 10**6)
    assert all(torch.equal(full.get(n), model.get(n)) for n in model.tensor_names)
    method = get_merge_method("task_arithmetic")
    plain = merge_state_dict(method, 1.0, base=base, defender=model, freeriders=[rider])
    extracted = merge_state_dict(method, 1.0, base=base, defender=full, freeriders=[rider])
    assert all(torch.equal(plain[n], extracted[n]) for n in plain)


def test_layerwise_leaves_out_the_block_a_defense_poisoned(toy_world, monkeypatch):
    """A per-block coefficient learned on the attacker's examples: a release whose damage sits in one block (its task
    vector there swamped by noise) breaks the plain task-arithmetic merge, and the learned coefficients turn that
    block down and bring the skill back, while the free-rider keeps his. (With activation checkpointing, as for an
    LLM: the same gradients.)"""
    from hf_mergeguard.attacks import layerwise

    monkeypatch.setattr(layerwise, "checkpointed", lambda parameters: True)
    from hf_mergeguard.selftest.config import SelfTestConfig

    model, base = Checkpoint(toy_world.model("count")), Checkpoint(toy_world.base)
    generator = torch.Generator().manual_seed(0)
    poisoned = {}
    for name, tensor in model.iter_tensors():
        if name.startswith("model.layers.1.") and tensor.dim() == 2:
            tau = tensor - base.get(name)
            noise = torch.randn(tensor.shape, generator=generator)
            tensor = tensor + 20 * tau.norm() / noise.norm() * noise
        poisoned[name] = tensor
    release = StateDictSource(poisoned, model.config, source="poisoned")
    config = SelfTestConfig(methods=["task_arithmetic"], limit=100, batch_size=128, adaptive=True, attacks=["layerwise"], attack_steps=30)
    report = _attacked(toy_world, config, release)
    plain = report.best["task_arithmetic"]["protected"]
    result = report.robustness.attacks["layerwise"]
    coefficients = result.details["coefficients"]
    # Measured (100 prompts): the plain merge keeps 0.74 of the gain, the learned one 0.91 (rev kept 0.93); the
    # coefficients: block 1 0.14, the others 1.06 to 1.80 (the noise-free blocks are turned up to make up for it).
    assert coefficients["1"] < 0.5 < 0.9 < min(c for block, c in coefficients.items() if block != "1")
    assert result.best.defender_kept >= plain.defender_kept + 0.12
    assert result.best.freerider_kept >= 0.8


def test_fine_tuning_attacks_search_their_settings_and_are_credited_beyond_the_best_reference(toy_world):
    """With --thorough the fine-tuning attacks try six settings (one change at a time) and keep their best; the
    references get the same search, so the credit is the best setting's kept share beyond the best reference's."""
    from hf_mergeguard.attacks.finetuning import fine_tuning_work, references_work
    from hf_mergeguard.selftest.config import SelfTestConfig

    options = dict(limit=24, batch_size=128, adaptive=True, attacks=["recover"], attack_steps=4, attack_examples=16)
    config = SelfTestConfig(methods=["model_stock"], thorough=True, **options)  # one merge: the test is of the search
    report = _attacked(toy_world, config)
    result = report.robustness.attacks["recover"]
    search = result.details["search"]
    assert [s["setting"] for s in search] == [
        "lr x1, 4 steps, every weight, from the freerider's best merge",
        "lr x1, 4 steps, every weight, from the defender's best merge",
        "lr x0.333333, 4 steps, every weight, from the freerider's best merge",
        "lr x3, 4 steps, every weight, from the freerider's best merge",
        "lr x1, 8 steps, every weight, from the freerider's best merge",
        "lr x1, 4 steps, LoRA r=16, from the freerider's best merge",
    ]
    assert result.best.defender_kept in [s["defender_kept"] for s in search]
    best_reference = max(s["reference_kept"] for s in search)
    assert result.credited == pytest.approx(result.best.defender_kept - best_reference)
    # The plan counts every setting: 4 + 4 + 4 + 4 + 8 + 4 steps for the attack; the references train 5 ways, twice.
    assert fine_tuning_work("recover", config).training_steps == 28
    assert references_work(config).training_steps == 2 * 24 and references_work(config).merges == 2
    assert fine_tuning_work("recover", SelfTestConfig(**options)).training_steps == 4


def test_ftmerge_trains_the_riders_task_into_the_release_and_keeps_the_defenders(toy_world, tmp_path):
    """The release fine-tuned on the free-rider's own rows (his task's training split, as the task shows them) with the
    KL term on the defender's prompts: it learns some of his skill, keeps the defender's, and is then merged; credited
    beyond the references. A free-rider task without a training split cannot be attacked this way."""
    from hf_mergeguard.evaluation import Evaluator
    from hf_mergeguard.selftest.config import SelfTestConfig

    config = SelfTestConfig(methods=["task_arithmetic"], limit=40, batch_size=128, adaptive=True, attacks=["ftmerge"], attack_steps=30)
    report = _attacked(toy_world, config)
    result = report.robustness.attacks["ftmerge"]
    details = result.details
    assert details["applies"] and details["freerider_task"] == "toy_rev" and details["freerider_rows"] == 512
    # Measured (the unprotected count fine-tune as the release, 40 prompts): loss 0.66 -> 0.07; the fine-tuned release
    # alone keeps 0.92 of count's gain and learned 0.30 of rev's (reported, not counted); its merges are credited beyond
    # the references.
    assert details["loss_first_last"][1] < 0.5 * details["loss_first_last"][0]
    assert details["alone"]["defender_kept"] >= 0.9 and details["alone"]["freerider_kept"] >= 0.2  # 40 prompts: 0.92, 0.30
    assert result.best.method == "task_arithmetic" and result.best.freerider_kept >= 0.5
    assert result.credited == pytest.approx(result.best.defender_kept - details["reference_kept"])

    yaml = (toy_world.tasks / "toy_rev.yaml").read_text().replace("task: toy_rev", "task: toy_rev_no_train")
    (tmp_path / "toy_rev_no_train.yaml").write_text(yaml.replace("training_split: train\n", "").replace("fewshot_split: train\n", ""))
    evaluator = Evaluator(["toy_rev", "toy_rev_no_train"], include_tasks=[str(tmp_path), str(toy_world.tasks)])
    assert evaluator.training_examples("toy_rev_no_train", 5) == []
    first, row = evaluator.training_examples("toy_rev", 2)[0], json.loads(toy_world.data("rev", "train").read_text().splitlines()[0])
    assert (first.prompt, first.completion) == (row["prompt"], row["completion"])  # doc_to_text, target_delimiter ("") + doc_to_target


def _attacked(toy_world, config, release=None):
    """``check`` of ``release`` (default: the count fine-tune) against the rev fine-tune, with the attacker's examples
    from count's training data (the self-test, then ``config``'s attacks)."""
    from hf_mergeguard.data import load_train_examples
    from hf_mergeguard.selftest.check import check_model

    return check_model(
        release or Checkpoint(toy_world.model("count")),
        Checkpoint(toy_world.base),
        config,
        tasks=["toy_count"],
        include_tasks=[str(toy_world.tasks)],
        merge_with=[str(toy_world.model("rev"))],
        freerider_tasks=["toy_rev"],
        attack_examples=load_train_examples(toy_world.data("count", "train"), limit=256),
        progress=False,
    )
