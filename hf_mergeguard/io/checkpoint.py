"""A model folder on disk: config, safetensors shards, tokenizer files (read-only).

:meth:`Checkpoint.open` opens a local folder or a Hub repo id (+ revision, token), reads ``config.json`` and the
safetensors headers (single file or sharded with an index), and gives tensors one at a time with plain reads at the
header's offsets, read ahead in a background thread: nothing here loads a whole model unless asked to
(:meth:`Checkpoint.state_dict`). Pickle-only checkpoints (``*.bin``, ``*.pt``) are refused: loading a pickle can
execute code.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from ..architectures import LM_HEAD, Geometry, geometry_from_config
from ..errors import CheckpointError, CorruptCheckpointError, PickleCheckpointError
from .hf_models import model_from_state_dict
from .hub import download_model, looks_like_repo_id
from .read_ahead import read_ahead
from .safetensors_format import INDEX_FILE, TensorSpec, read_safetensors_header, read_tensor
from .writer import assert_finite

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Top-level files that travel with the weights (config, tokenizer, generation config, chat template).
COMPANION_PATTERNS = ("*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja")
_NOT_COMPANIONS = {INDEX_FILE}


class Checkpoint:
    """A model folder on disk: config, safetensors shards, tokenizer files. Read-only.

    Args:
        path: the local folder (for a Hub repo, the snapshot folder in the HF cache).
        source: what the user asked for (folder or repo id), kept for reports.
        revision: the resolved revision (a commit hash for Hub repos), kept for reproducibility.
    """

    def __init__(self, path: str | os.PathLike, source: str | None = None, revision: str | None = None):
        self.path = Path(path)
        self.source = source or str(path)
        self.revision = revision
        if not self.path.is_dir():
            raise CheckpointError(
                f"{self.path} is not a folder.",
                "Pass a model folder (with config.json and *.safetensors) or a Hub repo id like org/name.",
            )
        self.config = self._read_config()
        self._file_of: dict[str, Path] = {}
        self._offset_of: dict[str, int] = {}
        self._specs: dict[str, TensorSpec] = {}
        self._checked_finite = False
        self.metadata: dict[str, str] = {}
        self._read_weight_headers()
        self._drop_tied_head()

    # --- opening -----------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        model: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> Checkpoint:
        """Open a local folder, or download (or reuse from the HF cache) a Hub repo's weights.

        Args:
            model: a local folder or a Hub repo id (``org/name``).
            revision: branch, tag or commit for Hub repos.
            token: Hub token; ``None`` uses the environment or the user's login.
            cache_dir: HF cache folder override.
        """
        local = Path(model).expanduser()
        if local.exists():
            return cls(local, source=str(model))

        if not looks_like_repo_id(str(model)):
            raise CheckpointError(
                f"{model} is neither an existing folder nor a Hub repo id.",
                "Check the path, or pass a repo id like org/name.",
            )
        folder, commit = download_model(str(model), revision=revision, token=token, cache_dir=cache_dir)
        return cls(folder, source=str(model), revision=commit)

    def _read_config(self) -> dict[str, Any]:
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise CheckpointError(
                f"{self.path} has no config.json.",
                "Point to a Hugging Face model folder (save_pretrained output) or a Hub repo id.",
            )
        try:
            return json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config_path} is not valid JSON: {exc}.") from None

    def _read_weight_headers(self) -> None:
        index_path = self.path / INDEX_FILE
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CorruptCheckpointError(
                    f"{index_path} is not a valid safetensors index (needs a 'weight_map').",
                    "Download the checkpoint again.",
                ) from None
            shards = list(dict.fromkeys(weight_map.values()))
            missing = [shard for shard in shards if not (self.path / shard).is_file()]
            if missing:
                raise CorruptCheckpointError(
                    f"{index_path.name} names shard(s) that are not in {self.path}: {', '.join(missing)}.",
                    "The download is incomplete: download the checkpoint again (or delete its HF cache folder and retry).",
                )
            files = [self.path / shard for shard in shards]
        else:
            files = sorted(self.path.glob("*.safetensors"))
            weight_map = None
        if not files:
            pickles = sorted(p.name for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise PickleCheckpointError(
                    f"{self.path} holds only pickle weights ({', '.join(pickles)}); hf-mergeguard reads "
                    "safetensors only, because loading a pickle can execute arbitrary code.",
                    'In an environment you trust, convert it: python -c "from transformers import '
                    "AutoModelForCausalLM as M; M.from_pretrained('IN').save_pretrained('OUT')\" "
                    "(save_pretrained writes safetensors), or use the Hub's 'convert to safetensors' Space.",
                )
            raise CheckpointError(
                f"{self.path} has no *.safetensors weights.",
                "Point to a model folder that holds safetensors weights.",
            )
        for file in files:
            specs, metadata, offsets = read_safetensors_header(file)
            if not self.metadata:
                self.metadata = metadata
            for name, spec in specs.items():
                if weight_map is not None and weight_map.get(name) != file.name:
                    continue
                self._specs[name] = spec
                self._file_of[name] = file
                self._offset_of[name] = offsets[name]
        if weight_map is not None:
            absent = [name for name in weight_map if name not in self._specs]
            if absent:
                raise CorruptCheckpointError(
                    f"{INDEX_FILE} lists tensors that its shards do not hold: {', '.join(absent[:5])}.",
                    "Download the checkpoint again.",
                )

    def _drop_tied_head(self) -> None:
        """A model whose config ties the LM head to the embeddings runs with the embeddings in both places, whatever
        ``lm_head.weight`` it also stores (transformers ties it on load); such a stored copy is left out here, so the
        model lines up with a base that does not store it, as mergekit treats it."""
        if LM_HEAD in self._specs and geometry_from_config(self.config).tie_word_embeddings:
            log.info("%s stores lm_head.weight but ties it to the embeddings: the stored copy is not used", self.source)
            del self._specs[LM_HEAD]

    # --- what is inside ----------------------------------------------------------------------------------

    @property
    def geometry(self) -> Geometry:
        return geometry_from_config(self.config)

    @property
    def tensor_names(self) -> list[str]:
        """Tensor names in storage order (shard by shard, by offset)."""
        return list(self._specs)

    @property
    def layout(self) -> dict[str, TensorSpec]:
        return dict(self._specs)

    @property
    def weight_files(self) -> list[Path]:
        return list(dict.fromkeys(self._file_of.values()))

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for spec in self._specs.values())

    def spec(self, name: str) -> TensorSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise CheckpointError(f"Tensor {name!r} is not in {self.source}.") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def companion_files(self) -> list[Path]:
        """Non-weight files that travel with the weights (config, tokenizer, generation config...)."""
        files: dict[str, Path] = {}
        for pattern in COMPANION_PATTERNS:
            for file in self.path.glob(pattern):
                if file.is_file() and file.name not in _NOT_COMPANIONS:
                    files[file.name] = file
        return [files[name] for name in sorted(files)]

    # --- reading tensors ---------------------------------------------------------------------------------

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from its shard (plain reads, see :func:`read_tensor`)."""
        file = self._file_of.get(name)
        if file is None:
            raise CheckpointError(f"Tensor {name!r} is not in {self.source}.")
        return read_tensor(file, self._offset_of[name], self._specs[name])

    def iter_tensors(self, names: Iterable[str] | None = None, read_ahead_depth: int = 2) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` one at a time, read ``read_ahead_depth`` tensors ahead in a background thread.

        Args:
            names: the tensors to read, in the order wanted; default: all, in storage order.
            read_ahead_depth: tensors read ahead of the consumer (0: read in the caller's thread).
        """
        wanted = self.tensor_names if names is None else list(names)
        for name in wanted:
            if name not in self._file_of:
                raise CheckpointError(f"Tensor {name!r} is not in {self.source}.")
        tensors = ((name, self.get(name)) for name in wanted)
        return read_ahead(tensors, read_ahead_depth) if read_ahead_depth > 0 else tensors

    def check_finite(self, progress: bool = False) -> None:
        """Read every tensor once and refuse NaN/Inf (before any work, so a bad input fails in seconds, not after
        hours of training). Remembered: a checkpoint is scanned once however often it is checked."""
        if self._checked_finite:
            return
        from ..progress import progress_bar

        bar = progress_bar(
            total=self.total_bytes,
            unit="B",
            unit_scale=True,
            desc=f"Checking {self.path.name}",
            disable=not progress or self.total_bytes < 1 << 30,
        )
        with bar:
            for name, tensor in self.iter_tensors():
                assert_finite(name, tensor, f" of {self.source} ({self._file_of[name].name})")
                bar.update(self.spec(name).nbytes)
        self._checked_finite = True

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors in memory. Only for models that fit (the toy world, evaluation)."""
        return dict(self.iter_tensors())

    def load_model(self, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
        """A ``transformers`` causal LM built from this checkpoint (``trust_remote_code`` stays off)."""
        return model_from_state_dict(self.config, self.state_dict(), dtype=dtype, device=device)
