"""Bad input, one test per case of the troubleshooting catalog (docs/troubleshooting.md), each through the real CLI.

Every test breaks one thing of a valid ``protect`` command on the toy world (with ``--push-to`` a fake Hub that
would accept the push) and ``refused`` (conftest.py) checks the promises: the error names the problem, the hint
the fix, exit code 2, no traceback unless ``--debug``, inputs untouched, no output, no partial folder, no key,
no push.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_mergeguard.io.checkpoint import Checkpoint
from hf_mergeguard.io.writer import write_checkpoint
from hf_mergeguard.testing import write_random_checkpoint

WEIGHTS = "model.safetensors"
MLP = "model.layers.1.mlp.up_proj.weight"


def _rewrite(folder: Path, change) -> Path:
    tensors = load_file(folder / WEIGHTS)
    change(tensors)
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    return folder


def _edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _random_like_world(release, name: str, **config_changes) -> Path:
    config = json.loads((Path(release.base) / "config.json").read_text())
    return write_random_checkpoint(release.tmp / name, {**config, **config_changes}, seed=1)


# --- models that do not fit together -------------------------------------------------------------------


def test_base_of_another_architecture(release, refused, pico):
    base = pico("qwen2")
    refused(
        release.argv(base=base),
        inputs=[release.model, base],
        out=release.out,
        expect=[r"is a llama model but base .* is a qwen2 model"],
        hint="fine-tuned from",
    )


def test_same_architecture_other_shapes(release, refused):
    base = _random_like_world(release, "wider-base", intermediate_size=384)
    refused(
        release.argv(base=base),
        inputs=[release.model, base],
        out=release.out,
        expect=[r"do not have the same tensors", r"mlp\.\w+_proj\.weight: \(\d+, \d+\) in model, \(\d+, \d+\) in base"],
        hint="fine-tuned from",
    )


@pytest.mark.parametrize("role", ["model", "base"])
def test_tensor_missing(release, refused, role):
    broken = _rewrite(release.copy("count" if role == "model" else "base"), lambda t: t.pop(MLP))
    argv = release.argv(**{role: broken})
    refused(
        argv,
        inputs=[broken, release.model, release.base],
        out=release.out,
        expect=[rf"does not match its own config\.json .*{MLP}: missing"],
        hint="save_pretrained",
    )


def test_extra_tensors(release, refused):
    broken = _rewrite(release.copy("count"), lambda t: t.update({"model.layers.0.mlp.adapter.weight": torch.zeros(4, 4)}))
    refused(
        release.argv(model=broken),
        inputs=[broken],
        out=release.out,
        expect=[r"model\.layers\.0\.mlp\.adapter\.weight: not part of a llama model"],
        hint="save_pretrained",
    )


def test_merge_with_a_model_of_another_base(release, refused):
    other = _random_like_world(release, "other-family", intermediate_size=384)
    refused(
        release.argv(merge_with=other),
        inputs=[other, release.model],
        out=release.out,
        expect=[r"--merge-with .*other-family", r"do not have the same tensors"],
        hint="same base",
    )


def test_different_vocab_sizes(release, refused):
    vocab = json.loads((Path(release.base) / "config.json").read_text())["vocab_size"]
    base = _random_like_world(release, "bigger-vocab", vocab_size=vocab + 16)
    refused(
        release.argv(base=base),
        inputs=[base],
        out=release.out,
        expect=[rf"vocabulary of {vocab} tokens and base .* {vocab + 16}", r"cannot be lined up row by row"],
        hint="tokenizer the fine-tune extended",
    )


def test_unknown_model_type(release, refused):
    broken = _edit_config(release.copy("count"), model_type="llama-turbo")
    refused(release.argv(model=broken), inputs=[broken], out=release.out, expect=[r"llama-turbo", r"llama"], hint=r"open an issue")


# --- files that are not what they claim ----------------------------------------------------------------


def test_truncated_safetensors(release, refused):
    broken = release.copy("count")
    data = (broken / WEIGHTS).read_bytes()
    (broken / WEIGHTS).write_bytes(data[: len(data) // 2])
    refused(release.argv(model=broken), inputs=[broken], out=release.out, expect=[r"truncated", WEIGHTS], hint="(?i)download")


def test_corrupt_safetensors_header(release, refused):
    broken = release.copy("count")
    data = bytearray((broken / WEIGHTS).read_bytes())
    data[8:24] = b"{not json at all"
    (broken / WEIGHTS).write_bytes(bytes(data))
    refused(release.argv(model=broken), inputs=[broken], out=release.out, expect=[r"header", WEIGHTS], hint="(?i)download")


def test_sharded_index_naming_a_missing_shard(release, refused):
    source = Checkpoint(release.world.model("count"))
    sharded = write_checkpoint(
        release.tmp / "sharded", source.iter_tensors(), source.layout, companions_from=source, max_shard_size=source.total_bytes // 4
    )
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 2
    shards[1].unlink()
    refused(
        release.argv(model=sharded),
        inputs=[sharded],
        out=release.out,
        expect=[rf"index\.json names shard\(s\) that are not in .*{shards[1].name}"],
        hint="(?i)download",
    )


class _Payload:
    """A pickle that would create a file when loaded: proof that we never unpickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_only_checkpoint(release, refused):
    folder = release.tmp / "pickled"
    folder.mkdir()
    shutil.copy(Path(release.model) / "config.json", folder / "config.json")
    marker = release.tmp / "pickle-was-loaded"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"payload": _Payload(marker)}))
    refused(release.argv(model=folder), inputs=[folder], out=release.out, expect=[r"pickle", r"execute"], hint="safetensors")
    assert not marker.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weight_in_an_input(release, refused, value):
    def poison(tensors):
        tensors[MLP][3, 5] = value

    broken = _rewrite(release.copy("count"), poison)
    refused(release.argv(model=broken), inputs=[broken], out=release.out, expect=[rf"{MLP}", r"NaN|Inf"], hint=r"re-export")


# --- names and options ---------------------------------------------------------------------------------


def test_lm_eval_task_name_unknown(release, refused):
    refused(
        release.argv(tasks="toy_cuont"),
        inputs=[release.model],
        out=release.out,
        expect=[r"Unknown lm-eval task 'toy_cuont'", r"Did you mean 'toy_count'"],
        hint=r"--include-tasks",
    )


def test_merge_method_typo(release, refused):
    refused(
        release.argv(methods="task_arithmetic,tiess"),
        inputs=[release.model],
        out=release.out,
        expect=[r"'tiess'", r"Did you mean 'ties'"],
        hint=r"available merge methods",
    )


def test_defense_name_typo(release, refused):
    expect = [r"'parms'", r"Did you mean 'params'"]
    refused(release.argv(method="parms"), inputs=[release.model], out=release.out, expect=expect, hint=r"available protection methods")


@pytest.mark.parametrize(
    "text, problem, hint",
    [
        ("method: [params\n", r"not valid YAML", r"Fix the YAML syntax"),
        ("metod: params\n", r"metod.*Did you mean 'method'|'metod'", r"Options of config: .*method"),
        ("mergeguard:\n  beta: strong\n", r"beta", r"--config"),
    ],
    ids=["syntax", "unknown-key", "wrong-type"],
)
def test_invalid_yaml_config(release, refused, text, problem, hint):
    config = release.tmp / "protect.yml"
    config.write_text(text)
    refused(release.argv() + ["--config", str(config)], inputs=[config], out=release.out, expect=[problem], hint=hint)


@pytest.mark.parametrize(
    "content, problem, hint",
    [
        ("", r"is empty", r"at least one training example"),
        ("\n\n", r"is empty", r"at least one training example"),
        ('{"prompt": "1+1=", "completion": "2"}\n{"prompt": oops}\n', r":2 is not valid JSON", r"one JSON object"),
        ('{"input": "1+1=", "output": "2"}\n', r"no usable columns", r"prompt\+completion"),
        (None, r"does not exist", r"JSONL file or a Hub dataset"),
        (
            '{"prompt": "count a\\n", "completion": "#### 1"}\n{"prompt": "Count A\\n", "completion": "#### 1"}\n',
            r"train\.jsonl:2; in the first, the characters 'A', 'C'",
            r"--train-format",
        ),
        (
            '{"prompt": "count a\\n", "completion": " "}\n',
            r"nothing to learn \(an empty answer\): \S+train\.jsonl:1",
            r"Remove the empty rows",
        ),
        (
            '{"prompt": "count ' + "a" * 100 + '\\n", "completion": "#### 100"}\n',
            r"longer than the model's context \(64 tokens\), up to 116",
            r"Shorten",
        ),
    ],
    ids=["empty", "blank-lines", "malformed", "no-columns", "missing", "unknown-characters", "empty-answer", "too-long"],
)
def test_empty_or_malformed_train_data(release, refused, content, problem, hint):
    data = release.tmp / "train.jsonl"
    if content is not None:
        data.write_text(content)
    refused(release.argv(train_data=data), inputs=[data] if content is not None else [], out=release.out, expect=[problem], hint=hint)


@pytest.mark.parametrize(
    "extra, problem, hint",
    [
        (["--trap-rider-data", "BROKEN"], r":1 is not valid JSON", r"\S"),
    ],
    ids=["malformed-rider-data"],
)
def test_bad_trap_options(release, refused, extra, problem, hint):
    broken = release.tmp / "rider.jsonl"
    broken.write_text('{"prompt": oops}\n')
    extra = [str(broken) if arg == "BROKEN" else arg for arg in extra]
    refused(release.argv(method="trap") + extra, inputs=[release.model, broken], out=release.out, expect=[problem], hint=hint)


def test_output_folder_exists(release, refused):
    release.out.mkdir()
    (release.out / "notes.txt").write_text("an earlier release: keep me")
    refused(release.argv(), inputs=[release.model], out=release.out, expect=[r"already exists"], hint="--overwrite")
    assert (release.out / "notes.txt").read_text() == "an earlier release: keep me"


def test_key_file_of_an_earlier_protection_exists(release, refused):
    key = release.out.parent / f"{release.out.name}.key.safetensors"
    key.write_bytes(b"the owner's earlier key")
    os.chmod(key, 0o600)
    refused(release.argv(), inputs=[key], out=release.out, expect=[r"Key file .* already exists"], hint="--overwrite")


# --- the Hub -------------------------------------------------------------------------------------------


def test_repo_does_not_exist(release, refused, hub, monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    refused(
        release.argv(model="acme/no-such-model"),
        inputs=[],
        out=release.out,
        expect=[r"Repo acme/no-such-model does not exist"],
        hint="spelling",
    )


def test_gated_repo_without_access(release, refused, hub, monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    hub.gated.add("meta-llama/Llama-Gated")
    refused(
        release.argv(base="meta-llama/Llama-Gated"),
        inputs=[release.model],
        out=release.out,
        expect=[r"meta-llama/Llama-Gated is a gated repo"],
        hint="Request access",
    )


def test_offline_with_nothing_cached(release, refused, monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    refused(
        release.argv(model="acme/never-downloaded", push_to=None),
        inputs=[],
        out=release.out,
        expect=[r"acme/never-downloaded .*not in the local cache"],
        hint="hf download",
    )


@pytest.mark.parametrize(
    "repo, problem",
    [
        ("otherorg/protected", r"cannot create repos under 'otherorg'"),
        ("bigcorp/model", r"This token cannot write to bigcorp/model"),
    ],
    ids=["namespace", "existing-repo"],
)
def test_no_write_access_to_push_to(release, refused, hub, repo, problem):
    hub.repos["bigcorp/model"] = {"private": False, "files": {}}
    refused(release.argv(push_to=repo), inputs=[release.model], out=release.out, expect=[problem], hint="namespace|write access")


def test_work_dir_of_a_run_with_other_options(release, refused, monkeypatch, capsys):
    """An explicit --work-dir whose finished steps were made with other options is refused before any work (they would
    be reused as they are)."""
    import json

    import hf_mergeguard.pipeline as pipeline
    from hf_mergeguard.cli.main import main
    from hf_mergeguard.errors import TrainingError
    from hf_mergeguard.workdir import RUN_RECORD

    work = release.tmp / "work"
    argv = release.argv() + ["--work-dir", str(work)]

    def killed(*args, **kwargs):
        raise TrainingError("killed after the work folder was claimed")

    monkeypatch.setattr(pipeline, "apply_defenses", killed)
    assert main([*argv, "--seed", "1"]) != 0  # an earlier run with seed 1, stopped in its first step
    earlier = json.loads((work / RUN_RECORD).read_text())
    assert earlier["options"]["run"]["seed"] == 1
    refused(
        argv,
        inputs=[work],
        out=release.out,
        expect=[r"holds the steps of a run with other options \(run\.seed\)"],
        hint="another --work-dir",
    )
    capsys.readouterr()
    assert main([*argv, "--seed", "1"]) != 0  # the same options go on to the steps (and resume them)
    assert "killed after the work folder was claimed" in capsys.readouterr().err
