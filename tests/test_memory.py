"""The memory model (``hf_mergeguard.memory``) and the pre-flight check built on it."""

import pytest

from hf_mergeguard.architectures import geometry_from_config
from hf_mergeguard.config import build_protect_config
from hf_mergeguard.errors import InsufficientMemoryError
from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.memory import GB, Shape, trap_memory
from hf_mergeguard.preflight import check_memory
from hf_mergeguard.testing import LLAMA_3_1_8B, LLAMA_3_2_1B, base_and_finetune, llama_config
from hf_mergeguard.trained_change import TrainedModel


def _shape(sizes):
    return Shape.from_geometry(geometry_from_config(llama_config(sizes)))


def test_shapes_count_the_real_parameters():
    """Llama-3.2-1B has 1.24 B parameters (tied), Llama-3.1-8B 8.03 B: the published counts."""
    assert _shape(LLAMA_3_2_1B).parameters == pytest.approx(1.236e9, rel=2e-3)
    assert _shape(LLAMA_3_1_8B).parameters == pytest.approx(8.030e9, rel=2e-3)


def test_an_8b_trap_fits_one_80gb_gpu_only_with_lora_and_checkpointing():
    """The trap's defaults train every weight in fp32: far above 80 GB at 8B (and above 24 GB at 1B). LoRA 16 with
    gradient checkpointing and 4 micro-batches per step brings the 8B under 80 GB (modelled, batch 16 x 512)."""
    eight, one = _shape(LLAMA_3_1_8B), _shape(LLAMA_3_2_1B)
    tokens = 16 * 512
    default = trap_memory(eight, stored_bytes=2, lora_rank=0, samples=2, tokens=tokens, checkpointing=False)
    lean = trap_memory(eight, stored_bytes=2, lora_rank=16, samples=2, tokens=tokens // 4, checkpointing=True)
    assert default.total / GB > 300
    assert lean.total / GB < 80, lean.describe()
    assert trap_memory(one, stored_bytes=2, lora_rank=0, samples=2, tokens=tokens, checkpointing=False).total / GB > 24


def test_lora_count_matches_the_code(tmp_path):
    """The model's LoRA size (rank x sum of in + out over the decoder's linear weights) is what TrainedModel trains."""
    tuned, base = base_and_finetune(tmp_path, "llama")
    model = tuned.load_model()
    trained = TrainedModel(model, base.state_dict(), lora_rank=4)
    assert trained.trainable_parameters() == 4 * Shape.of(tuned.config).lora_pairs


def test_a_run_that_cannot_fit_is_refused_before_any_work_naming_the_fix(tmp_path):
    tuned, _ = base_and_finetune(tmp_path, "llama")
    config = build_protect_config(None, {"model": str(tuned.path), "base": "b", "method": "trap", "output_dir": str(tmp_path / "o")})
    checked = check_memory(config, Checkpoint(tuned.path), processes=1, device="cpu")
    assert checked[0]["stage"] == "merge trap" and 1.0 <= checked[0]["modelled_gb"] < 2.0  # a pico model: the runtime
    with pytest.raises(InsufficientMemoryError) as error:
        check_memory(config, Checkpoint(tuned.path), processes=1, device="cpu", free=(0.5 * GB, "0.5 GB of available RAM"))
    assert "merge trap would need about" in error.value.message and "--trap-lora-rank 16 --gradient-checkpointing" in error.value.hint
    config.run.memory_check = False
    check_memory(config, Checkpoint(tuned.path), processes=1, device="cpu", free=(0.5 * GB, "0.5 GB"))  # told it fits


def test_training_stages_are_checked_only_when_they_train(tmp_path):
    """MergeGuard without stage 1 streams one tensor at a time: nothing to check; with --stage1 it is."""
    tuned, _ = base_and_finetune(tmp_path, "llama")
    options = {"model": str(tuned.path), "base": "b", "method": "mergeguard", "output_dir": str(tmp_path / "o")}
    options["selftest"] = {"adaptive": False}  # the attacks' fine-tunes are checked too: see the next test
    assert check_memory(build_protect_config(None, options), Checkpoint(tuned.path), processes=1, device="cpu") == []
    staged = build_protect_config(None, {**options, "mergeguard": {"skip_stage1": False}})
    assert [c["stage"] for c in check_memory(staged, Checkpoint(tuned.path), processes=1, device="cpu")] == ["MergeGuard stage 1"]


def test_fine_tuning_attacks_are_checked_too(tmp_path):
    """The adaptive stage fine-tunes (distill's reference, recover, graderase): modelled like the defenses, refused with
    the LoRA option."""
    tuned, _ = base_and_finetune(tmp_path, "llama")
    options = {"model": str(tuned.path), "base": "b", "method": "params", "output_dir": str(tmp_path / "o")}
    config = build_protect_config(None, {**options, "selftest": {"adaptive": True}})
    checked = check_memory(config, Checkpoint(tuned.path), processes=1, device="cpu")
    assert [c["stage"] for c in checked] == ["the layerwise attack", "the distill attack", "the recover attack", "the graderase attack"]
    with pytest.raises(InsufficientMemoryError) as error:
        check_memory(config, Checkpoint(tuned.path), processes=1, device="cpu", free=(0.5 * GB, "0.5 GB"))
    # layerwise takes every weight's gradient whatever --attack-lora-rank: its own hint.
    assert "the layerwise attack would need" in error.value.message and "--attacks without layerwise" in error.value.hint
    config = build_protect_config(None, {**options, "selftest": {"adaptive": True, "attacks": ["recover", "graderase"]}})
    with pytest.raises(InsufficientMemoryError) as error:
        check_memory(config, Checkpoint(tuned.path), processes=1, device="cpu", free=(0.5 * GB, "0.5 GB"))
    assert "the recover attack would need" in error.value.message and "--attack-lora-rank 16" in error.value.hint
