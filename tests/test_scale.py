"""The paths that make a 7B checkpoint stream in bounded memory give the same results as the simple ones:
plain reads, read-ahead threads, chunked transforms, lazily made blocks, matching above the exact size.
(The speed and memory figures are measured by ``benchmarks/scale.py``, not here.)"""

import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.io.read_ahead import read_ahead
from hf_mergeguard.io.safetensors_format import layout_of
from hf_mergeguard.io.writer import write_checkpoint
from hf_mergeguard.protect.base import DEFENSES
from hf_mergeguard.protect.function_preserving import sample_transform
from hf_mergeguard.symmetry import matching
from hf_mergeguard.symmetry import transforms as symmetry
from hf_mergeguard.testing import pico_config, write_random_checkpoint


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool])
def test_plain_reads_equal_safetensors(tmp_path, dtype):
    tensors = {
        "a": torch.arange(24).reshape(2, 3, 4).to(dtype),
        "empty": torch.zeros(0, 5, dtype=dtype),
        "scalar": torch.tensor(3).to(dtype),
    }
    config = pico_config("llama")
    folder = write_checkpoint(tmp_path / "m", iter(tensors.items()), layout_of(tensors), config=config)
    checkpoint = Checkpoint(folder)
    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        for name in tensors:
            assert torch.equal(checkpoint.get(name), handle.get_tensor(name)), name
            assert checkpoint.get(name).dtype == dtype


def test_read_ahead_keeps_order_raises_producer_errors_and_stops_early():
    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad tensor")

    with pytest.raises(ValueError, match="bad tensor"):
        list(read_ahead(failing()))

    def endless():
        index = 0
        while True:
            yield index
            index += 1

    before = set(threading.enumerate())
    iterator = read_ahead(endless(), depth=2)
    assert next(iterator) == 0
    (producer,) = [thread for thread in threading.enumerate() if thread not in before]
    iterator.close()  # the consumer stops early: the producer thread, blocked on a full queue, must end too
    producer.join(5)
    assert not producer.is_alive()


def test_chunked_transform_equals_whole_tensor(tmp_path, monkeypatch):
    config = pico_config("llama", attention_bias=True)
    base = Checkpoint(write_random_checkpoint(tmp_path / "base", config, seed=0))
    model = Checkpoint(write_random_checkpoint(tmp_path / "tuned", config, seed=1, like=base.path, noise=0.1))
    geometry = model.geometry
    transforms = [
        dict(sample_transform(method, DEFENSES.get(method).options(), model, base, torch.Generator().manual_seed(0)))
        for method in ("params", "mergelock")
    ]
    whole = [{name: symmetry.transform_tensor(name, tensor, t, geometry) for name, tensor in model.iter_tensors()} for t in transforms]
    monkeypatch.setattr(symmetry, "_CHUNK_ELEMENTS", 50)  # every matrix in several chunks, the last one short
    for transform, expected in zip(transforms, whole):
        for name, tensor in model.iter_tensors():
            assert torch.equal(symmetry.transform_tensor(name, tensor, transform, geometry), expected[name]), name


def test_lazy_transform_draws_what_an_eager_loop_draws():
    def sampler(generator):
        return lambda layer: symmetry.BlockTransform(mlp_permutation=torch.randperm(8, generator=generator))

    eager_generator = torch.Generator().manual_seed(5)
    eager = [sampler(eager_generator)(layer) for layer in range(4)]
    lazy = symmetry.LazyTransform(4, sampler(torch.Generator().manual_seed(5)))
    for layer in (2, 0, 3, 1):  # any order of use
        assert torch.equal(lazy[layer].mlp_permutation, eager[layer].mlp_permutation)
    assert lazy.get(4) is None and len(lazy) == 4

    def failing(layer):
        raise RuntimeError(f"block {layer} failed")

    with pytest.raises(RuntimeError, match="block 0 failed"):
        symmetry.LazyTransform(2, failing)[0]


def test_matching_above_the_exact_size(monkeypatch):
    """The coordinate-sample paths (used above 4,096 neurons) on 600 neurons: re-alignment finds a hidden
    permutation of a near copy exactly, and the blockwise mismatch is a permutation less like the base than
    a random one (less so than the exact assignment)."""
    generator = torch.Generator().manual_seed(0)
    n, width = 600, 512
    base = [torch.randn(n, width, generator=generator) for _ in range(2)]
    hidden = torch.randperm(n, generator=generator)
    copy = [(b + 0.2 * torch.randn(n, width, generator=generator))[hidden] * 3.0 for b in base]
    monkeypatch.setattr(matching, "EXACT_LIMIT", 100)
    monkeypatch.setattr(matching, "BLOCK", 128)
    assert matching.sketch_columns(width, n) is not None
    features = lambda rows: [matching.features(r, n, normalise=True) for r in rows]  # noqa: E731
    permutation = matching.align(features(base), features(copy))
    assert torch.equal(hidden[permutation], torch.arange(n))  # position i gets the copy of base neuron i

    raw = lambda rows: [matching.features(r, n, normalise=False) for r in rows]  # noqa: E731
    unlike = matching.mismatch(raw(base), raw(copy), torch.Generator().manual_seed(1))
    assert torch.equal(torch.sort(unlike).values, torch.arange(n))

    def similarity(p):
        return float(sum((b * c[p]).sum() for b, c in zip(base, copy)))

    monkeypatch.setattr(matching, "EXACT_LIMIT", 10_000)
    exact = matching.mismatch(raw(base), raw(copy))
    random = torch.randperm(n, generator=generator)
    # Blocks of 128 on a 128-coordinate sample keep at least a third of the exact assignment's gain over a
    # random permutation; the permutation as a whole is still unlike the base (negative similarity).
    gain = (similarity(random) - similarity(unlike)) / (similarity(random) - similarity(exact))
    assert 0.35 <= gain < 1.0
    assert similarity(unlike) < 0


@pytest.mark.slow  # a pico world and two protect runs, stage by stage: about a minute
def test_the_gpu_check_runs_on_cpu(tmp_path):
    """``benchmarks/gpu_check.py --preset cpu``: the script a GPU machine runs, on the pico world here, every stage
    timed and measured (the trap as an LLM runs it: LoRA 16 with gradient checkpointing; MergeGuard with stage 1)."""
    import json
    import subprocess
    import sys

    script = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"
    command = [sys.executable, str(script), "--preset", "cpu", "--out", str(tmp_path), "--results", str(tmp_path / "gpu_check.md")]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=script.parent, timeout=900)  # the tests' cache
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check-cpu.json").read_text())
    stages = [row["stage"] for row in record["stages"]]
    steps = ("pull", "memory check", "protect", "self-test", "adaptive attacks")
    for method in ("trap", "mergeguard"):
        assert [s for s in stages if s.startswith(method)] == [f"{method}: {step}" for step in steps]
    assert all(row["seconds"] >= 0 and row["peak_gb"] > 0.1 for row in record["stages"])
    trap = next(run for run in record["runs"] if run["method"] == "trap")
    assert trap["memory_check"][0]["stage"] == "merge trap" and set(trap["adaptive"]) <= {"unmask"}
    assert "| trap: protect |" in (tmp_path / "gpu_check-cpu.md").read_text()
