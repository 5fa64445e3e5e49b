"""Shared fixtures. Everything is offline: tests build their own models and data."""

import os
from pathlib import Path

# Before anything imports huggingface_hub / datasets / transformers.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
# One toy-world build per checkout (CI builds it once per run; developers keep theirs).
os.environ.setdefault("HF_MERGEGUARD_CACHE", str(REPO / ".cache" / "hf_mergeguard"))

import pytest  # noqa: E402


@pytest.fixture
def pico(tmp_path):
    """Factory: ``pico("qwen2", dtype=torch.bfloat16, max_shard_size=...)`` -> folder of a random tiny model."""
    from hf_mergeguard.testing import pico_config, write_random_checkpoint

    counter = {"n": 0}

    def make(model_type="llama", *, seed=0, folder=None, config_overrides=None, **kwargs):
        counter["n"] += 1
        folder = folder or tmp_path / f"{model_type}-{counter['n']}"
        config = pico_config(model_type, **(config_overrides or {}))
        return write_random_checkpoint(folder, config, seed=seed, **kwargs)

    return make


@pytest.fixture(scope="session")
def toy_world():
    """The default toy world (built once, cached under $HF_MERGEGUARD_CACHE)."""
    from hf_mergeguard.toyworld import build_toy_world

    return build_toy_world(progress=False)


@pytest.fixture
def hub(monkeypatch):
    """A local fake of the Hub's HTTP API (tests/fake_hub.py), with huggingface_hub pointed at it."""
    from fake_hub import FakeHub
    from huggingface_hub import constants

    with FakeHub() as fake:
        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
        # Built from ENDPOINT at import: without this, file downloads would go to huggingface.co.
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield fake
