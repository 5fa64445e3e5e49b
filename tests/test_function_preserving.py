"""PaRaMS, MergeLock, MergeBarrier (and MergeGuard stacked with MergeLock) protect a fine-tune trained in the
toy world: real mergekit merges, real lm-eval scores; and the owner's key undoes them."""

import json
import os
import stat

import pytest
import torch

from hf_mergeguard.cli.main import main
from hf_mergeguard.io.checkpoint import Checkpoint


@pytest.fixture(autouse=True)
def fixed_keys(monkeypatch):
    """Keys come from the OS in real runs; here from seeds 0, 1, ... so the figures below are reproducible."""
    from hf_mergeguard.protect import function_preserving

    seeds = iter(range(100))
    monkeypatch.setattr(function_preserving, "secret_generator", lambda: torch.Generator().manual_seed(next(seeds)))


@pytest.fixture
def protect(protect_argv):
    """``protect(world, out, method, *extra)``: the exit code of a protect run without the adaptive attacks, every grid
    point scored on every prompt (``--race-rounds 1``: the tests measure the whole grid, not only the attacker's best)."""

    def run(world, out, method, *extra):
        argv = protect_argv(
            world,
            out,
            "--method",
            method,
            "--no-adaptive",
            "--race-rounds",
            "1",
            "--limit",
            str(PROMPTS),
            *extra,
            work=out.parent / f"work-{method}",
        )
        return main(argv)

    return run


# A seeded subset of the 300 test prompts (a third of the suite's time; the bounds below hold at ±5 points).
PROMPTS = 100


def _free_ride(report, variant):
    """The most a merge keeps of BOTH skills at once: min(defender kept, free-rider kept), best grid point."""
    return max(min(e["defender_kept"], e["freerider_kept"]) for e in report["merges"] if e["variant"] == variant)


# Measured on the toy world (count fine-tune 99.7 points, base 66.0; free-rider rev; 300 prompts per task, before the
# test ran on a 100-prompt subset, where every bound below was checked to hold again on 2026-12-02; keys
# from seeds 0, 1, ...). Unprotected: TA lambda=1 keeps 75% of the count gain and 98% of rev's; TIES 9%,
# DARE-TIES 74%. Best free ride (both skills) protected: params -2.57, mergelock -0.30, mergebarrier -0.01,
# mergeguard+mergelock -0.17 (unprotected 0.75). TA's best: params -1.70; mergelock 0.97, mergebarrier 0.93,
# mergeguard+mergelock 0.85, all at lambda 1 with the free-rider's gain lost (-0.30, -0.01, -0.17).
# PaRaMS passes both gates (exit 0); the others fail the retention gate on TA lambda = 1 (see below).
# (The bounds hold on the toy world built by this machine's CPU and on the one an earlier machine built: see
# hf_mergeguard.environment, REPRODUCIBLE_CPU_NUMERICS.)
@pytest.mark.parametrize("method, exit_code", [("params", 0), ("mergelock", 1), ("mergebarrier", 1), ("mergeguard+mergelock", 1)])
def test_defense_breaks_every_merge_on_the_toy_world(toy_world, tmp_path, capsys, method, exit_code, protect):
    out = tmp_path / "protected"
    assert protect(toy_world, out, method) == exit_code
    capsys.readouterr()
    report = json.loads((out / "selftest.json").read_text())
    standalone = report["standalone"]
    drop = 100 * (standalone["original"]["toy_count"] - standalone["protected"]["toy_count"])
    if "mergeguard" in method:
        assert 1.5 < drop <= 10  # MergeGuard's own drop (measured 4.3), the symmetry adds none
    else:
        assert standalone["protected"] == standalone["original"]  # the same function, the same answers

    # Unprotected, a free-rider gets both skills; protected, no merge method at any coefficient keeps even a
    # quarter of both: each merge wrecks the free-rider's rev skill, and all but TA lambda=1 the count skill too.
    assert _free_ride(report, "original") >= 0.7
    assert _free_ride(report, "protected") <= 0.25
    best = report["best"]
    assert best["dare_ties"]["protected"]["defender_kept"] <= 0.1  # measured -1.89 to -1.96 (0.74 unprotected)
    # TIES, measured: params -1.96, mergelock -0.44, stack -0.45; MergeBarrier 0.40 (unprotected 0.09), at a
    # density where the free-rider's gain is -2.56: the orthogonal maps alone leave TIES' count skill alone.
    assert best["ties"]["protected"]["defender_kept"] <= (0.45 if method == "mergebarrier" else 0.1)
    ta = best["task_arithmetic"]["protected"]
    if method == "params":
        # Attention scales up to 20x make tau_rev, added at lambda = 1, large next to the shrunken k rows.
        assert ta["defender_kept"] <= 0.1 and report["passed"] is True
    else:
        # The honest gap: TA at lambda = 1 is theta_hat + tau_rev, the protected model plus a perturbation, and it
        # keeps the count skill while losing rev; the self-test counts it anyway and fails the gate.
        assert ta["value"] == 1.0 and ta["defender_kept"] >= 0.5 and ta["freerider_constraint_met"] is False
        assert report["gates"]["merged_retention"]["passed"] is False

    # The key: beside the folder, owner-only, never inside what is uploaded.
    key = tmp_path / "protected.key.safetensors"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key_bytes = key.read_bytes()
    for file in out.iterdir():
        assert key_bytes[-4096:] not in file.read_bytes(), file.name
    assert [p["method"] for p in report["protection"]] == method.split("+")
    assert "secret" not in json.dumps(report) and str(key) not in json.dumps(report)

    if method == "mergeguard+mergelock":
        # The key undoes the symmetry only: unprotect gives back the MergeGuard-protected weights, and says so.
        restored = tmp_path / "restored"
        assert main(["unprotect", str(out), "--key", str(key), "--output-dir", str(restored)]) == 0
        assert "kept mergeguard" in capsys.readouterr().out
        guarded, back = Checkpoint(tmp_path / f"work-{method}" / "0-mergeguard" / "mergeguard-protected"), Checkpoint(restored)
        assert max((guarded.get(n).double() - back.get(n).double()).abs().max().item() for n in guarded.tensor_names) <= 1e-6


def test_unprotect_restores_the_original_and_refuses_a_wrong_key(toy_world, tmp_path, capsys, protect):
    out = tmp_path / "protected"
    # params breaks TA too: both gates pass. The release is what this test needs, not the grid (each defense's grid is
    # above): a short self-test, task arithmetic on 40 prompts.
    assert protect(toy_world, out, "mergelock+params", "--methods", "task_arithmetic", "--limit", "40") == 0
    printed = capsys.readouterr().out
    key = tmp_path / "protected.key.safetensors"
    assert str(key) in printed

    restored = tmp_path / "restored"
    assert main(["unprotect", str(out), "--key", str(key), "--output-dir", str(restored)]) == 0
    assert "Undid mergelock then params" in capsys.readouterr().out
    original, back = Checkpoint(toy_world.model("count")), Checkpoint(restored)
    worst = max((original.get(n).double() - back.get(n).double()).abs().max().item() for n in original.tensor_names)
    assert worst <= 1e-6  # float32 round trip (measured: 1.5e-08 for each defense alone)
    protected = Checkpoint(out)
    assert max((original.get(n) - protected.get(n)).abs().max().item() for n in original.tensor_names) > 0.1
    assert not (restored / "selftest.json").exists() and (restored / "tokenizer.json").is_file()

    # A key for other weights (the same maps, written for a checkpoint with another digest): refused, nothing written.
    from hf_mergeguard.protect.keyfile import read_key, write_key

    other = write_key(tmp_path / "other.key.safetensors", read_key(key).stages, protected_digest="0" * 64)
    assert main(["unprotect", str(out), "--key", str(other), "--output-dir", str(tmp_path / "r2")]) == 2
    assert "was not written for the weights" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()

    # A key others can read: refused with the fix.
    os.chmod(key, 0o644)
    assert main(["unprotect", str(out), "--key", str(key), "--output-dir", str(tmp_path / "r3")]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_key_inside_the_release_folder_is_refused(toy_world, tmp_path, capsys, protect):
    out = tmp_path / "protected"
    assert protect(toy_world, out, "mergelock", "--key-file", str(out / "key.safetensors")) == 2
    assert "inside the release folder" in capsys.readouterr().err
    assert not out.exists()


def test_stack_order_is_fixed_and_names_checked():
    from hf_mergeguard.errors import ConfigError, UnknownNameError
    from hf_mergeguard.protect.stack import parse_method

    assert parse_method("mergelock+mergeguard") == ["mergeguard", "mergelock"]
    assert parse_method("mergelock+params+mergebarrier") == ["params", "mergebarrier", "mergelock"]
    with pytest.raises(ConfigError, match="twice"):
        parse_method("mergelock+mergelock")
    with pytest.raises(UnknownNameError, match="mergelok"):
        parse_method("mergelok")


@pytest.mark.parametrize("method", ["params", "mergelock", "mergebarrier"])
def test_bf16_round_trip_is_exact_to_bf16_rounding(tmp_path, method):
    """In bf16 the transforms (float64 maths, one rounding to bf16 on the way out and one on the way back) are not
    bit-exact: measured on a bf16 pico Llama, a share of entries moves by a bf16 step (the figures are in
    docs/results.md). The bound: no tensor moves by more than 1e-2 of its norm (measured 1.7e-03 to 3.2e-03), while
    float32 is exact to 1e-6 (the toy-world test above). The protected model itself is as exact as any bf16 cast
    (benchmarks/results/exactness.md)."""
    from hf_mergeguard.protect.base import DEFENSES
    from hf_mergeguard.protect.function_preserving import write_protected
    from hf_mergeguard.testing import FAST_ROPE, pico_config, write_random_checkpoint
    from hf_mergeguard.unprotect import unprotect

    config = pico_config("llama", **FAST_ROPE)
    base = write_random_checkpoint(tmp_path / "base", config, dtype=torch.bfloat16)
    tuned = write_random_checkpoint(tmp_path / "tuned", config, dtype=torch.bfloat16, seed=1, like=base, noise=0.1)
    key = tmp_path / "key.safetensors"
    options = DEFENSES.get(method).options()
    write_protected(
        Checkpoint(tuned),
        Checkpoint(base),
        method,
        options,
        tmp_path / "protected",
        key,
        companions_from=Checkpoint(tuned),
        generator=torch.Generator().manual_seed(0),
    )
    unprotect(tmp_path / "protected", key, tmp_path / "back", progress=False)
    original, back = Checkpoint(tuned), Checkpoint(tmp_path / "back")
    changed = sum(int((original.get(n) != back.get(n)).sum()) for n in original.tensor_names) / sum(
        original.get(n).numel() for n in original.tensor_names
    )
    relative = max(
        float((original.get(n).float() - back.get(n).float()).norm() / original.get(n).float().norm()) for n in original.tensor_names
    )
    print(f"{method}: {changed:.1%} of entries differ, worst tensor {relative:.1e}")
    assert back.get(original.tensor_names[0]).dtype == torch.bfloat16
    assert relative <= 1e-2 and changed < 0.5
