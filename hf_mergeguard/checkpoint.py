"""Checkpoint I/O: the only module that reads or writes files of weights.

* :meth:`Checkpoint.open` opens a local folder or a Hub repo id (+ revision, token), reads ``config.json``
  and the safetensors headers (single file or sharded with an index), and gives tensors one at a time with
  plain reads at the header's offsets (no memory map, so resident memory stays at the tensors held), read
  ahead in a background thread: nothing here loads a whole model unless asked to (:meth:`Checkpoint.state_dict`).
* :func:`write_checkpoint` streams tensors into sharded safetensors files with an index, copies the
  non-weight files (config, tokenizer, generation config), stamps the header metadata (tool version,
  method, config digest: never a secret), checks every tensor is finite, and writes atomically: into a
  temporary folder beside the target, renamed into place only when complete.
* Pickle-only checkpoints (``*.bin``, ``*.pt``) are refused: loading a pickle can execute code.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from . import __version__
from .architectures import LM_HEAD, Geometry, geometry_from_config
from .errors import (
    CheckpointError,
    CorruptCheckpointError,
    DiskFullError,
    NonFiniteWeightsError,
    OutputExistsError,
    PickleCheckpointError,
)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Top-level files that travel with the weights (config, tokenizer, generation config, chat template).
COMPANION_PATTERNS = ("*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja")
_NOT_COMPANIONS = {INDEX_FILE}
_MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """Name-free description of one stored tensor."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.empty((), dtype=self.dtype).element_size()


Layout = Mapping[str, TensorSpec]


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorSpec], dict[str, str], dict[str, int]]:
    """Parse and validate one safetensors header without reading tensor data.

    Returns the tensor specs in data order, the ``__metadata__`` dict and each tensor's offset in the file.
    A truncated file or a corrupt header raises :class:`CorruptCheckpointError`.
    """
    size = path.stat().st_size
    hint = "Download or convert the checkpoint again; the file is damaged."
    with open(path, "rb") as handle:
        raw_len = handle.read(8)
        if len(raw_len) < 8:
            raise CorruptCheckpointError(f"{path} is too short to be a safetensors file.", hint)
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CorruptCheckpointError(
                f"{path} has a corrupt safetensors header (declared header size {header_len} bytes, "
                f"file size {size} bytes).",
                hint,
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptCheckpointError(f"{path} has a corrupt safetensors header: {exc}.", hint) from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path} has a corrupt safetensors header (not a JSON object).", hint)
    metadata = header.pop("__metadata__", None) or {}
    specs: list[tuple[int, str, TensorSpec]] = []
    data_len = size - 8 - header_len
    for name, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CorruptCheckpointError(
                f"{path}: corrupt or unsupported header entry for tensor {name!r}: {entry!r}.", hint
            ) from None
        spec = TensorSpec(dtype, shape)
        if end - begin != spec.nbytes or end > data_len or begin < 0:
            raise CorruptCheckpointError(
                f"{path} is truncated or corrupt: tensor {name!r} needs bytes {begin}..{end} of the data "
                f"section, which holds {data_len} bytes.",
                hint,
            )
        specs.append((begin, name, spec))
    specs.sort(key=lambda item: item[0])
    start = 8 + header_len
    return {name: spec for _, name, spec in specs}, dict(metadata), {name: start + begin for begin, name, _ in specs}


def read_tensor(path: Path, offset: int, spec: TensorSpec) -> torch.Tensor:
    """One tensor's bytes read into a fresh tensor with plain reads (no memory map).

    safetensors' ``safe_open`` maps the whole file: every page a model-sized pass touches stays in the
    process's resident memory until the file is closed (a 10 GB shard reads as 10 GB resident). Plain reads
    keep the resident memory to the tensors actually held.
    """
    tensor = torch.empty(spec.shape, dtype=spec.dtype)
    if tensor.numel() == 0:
        return tensor
    buffer = memoryview(tensor.view(-1).view(torch.uint8).numpy())
    descriptor = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(buffer):
            read = os.preadv(descriptor, [buffer[done:]], offset + done)
            if read == 0:
                raise CorruptCheckpointError(f"{path} ended while reading a tensor: the file is truncated.",
                                             "Download or convert the checkpoint again; the file is damaged.")
            done += read
    finally:
        os.close(descriptor)
    return tensor


def read_ahead(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    Reading, computing and writing then overlap (file I/O and torch's kernels release the GIL). An
    exception in the producer is raised in the consumer; a consumer that stops early stops the producer.
    """
    import queue
    import threading

    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as exc:  # handed to the consumer
            slots.put((done, exc))

    thread = threading.Thread(target=produce, name="hf-mergeguard-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(0.05)


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

    # --- opening -----------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        model: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> "Checkpoint":
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
        from .hub import download_model, looks_like_repo_id

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
                    "The download is incomplete: download the checkpoint again (or delete its HF cache "
                    "folder and retry).",
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
                    "In an environment you trust, convert it: python -c \"from transformers import "
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
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_bytes, unit="B", unit_scale=True, desc=f"Checking {self.path.name}",
                   disable=not progress or self.total_bytes < 1 << 30)
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


def model_from_state_dict(
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
):
    """Build a ``transformers`` causal LM from a config dict and tensors already in memory.

    The model may share memory with ``state_dict`` (no copy is made): do not modify one through the other.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.utils import logging as hf_logging

    config = dict(config)
    model_type = config.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **config)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(hf_config)]
    tensors = dict(state_dict)
    if hf_config.tie_word_embeddings:
        tensors.pop(LM_HEAD, None)
    hf_logging.disable_progress_bar()
    # from_pretrained(None, state_dict=...) builds on the meta device, assigns our tensors and computes the
    # non-persistent buffers (RoPE frequencies, embedding scales) for real; it also ties embeddings.
    model = model_class.from_pretrained(None, config=hf_config, state_dict=tensors, dtype=dtype or "auto")
    parameters = dict(model.named_parameters(remove_duplicate=False))
    unexpected = [name for name in tensors if name not in parameters]
    missing = [n for n in parameters if n not in tensors and not (hf_config.tie_word_embeddings and n == LM_HEAD)]
    if unexpected or missing:
        raise CheckpointError(f"Weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    model.to(device)
    model.eval()
    return model


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's tensors as stored on disk (lm_head dropped when tied to the embeddings)."""
    tensors = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        tensors.pop(LM_HEAD, None)
    return tensors


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------


def parse_size(size: int | str) -> int:
    """``"5GB"`` -> 5_000_000_000; ``"500MiB"`` -> 524_288_000; ints pass through."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"Cannot read size {size!r}; use e.g. 5GB, 500MB or a number of bytes.")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    power = " KMGT".index(unit.upper() or " ")
    return int(float(number) * base**power)


def layout_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {name: TensorSpec(t.dtype, tuple(t.shape)) for name, t in tensors.items()}


def assert_finite(name: str, tensor: torch.Tensor, where: str = "") -> None:
    """Raise :class:`NonFiniteWeightsError` if ``tensor`` holds NaN or Inf."""
    # max |x| is NaN or Inf exactly when some entry is (amax propagates NaN); cheaper than isfinite().all(),
    # which builds a boolean tensor as large as the weights.
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor.abs().amax())):
        nan = int(torch.isnan(tensor).sum())
        inf = int(torch.isinf(tensor).sum())
        raise NonFiniteWeightsError(
            f"Tensor {name!r}{where} holds {nan} NaN and {inf} Inf value(s); nothing was written.",
            "If the input model has them, fix or re-export it; if a defense produced them, lower its "
            "strength (e.g. --beta, or the transform's conditioning) and rerun.",
        )


def _plan_shards(layout: Layout, max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, spec in layout.items():
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += spec.nbytes
    return shards


def _shard_file_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class _ShardWriter:
    """Writes one safetensors file: header first (all specs are known), then tensor bytes in order."""

    def __init__(self, path: Path, names: list[str], layout: Layout, metadata: Mapping[str, str]):
        header: dict[str, Any] = {"__metadata__": dict(metadata)}
        offset = 0
        for name in names:
            spec = layout[name]
            header[name] = {
                "dtype": _DTYPE_NAMES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # safetensors pads the header to 8-byte alignment
        self.path = path
        self.pending = list(names)
        self.handle = open(path, "wb")
        self.handle.write(struct.pack("<Q", len(encoded)))
        self.handle.write(encoded)

    def write(self, tensor: torch.Tensor) -> None:
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self.handle.write(memoryview(data))
        self.pending.pop(0)

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


def _stale_partial(path: Path) -> bool:
    match = re.search(r"\.partial-(\d+)-", path.name)
    if not match:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename: a reader (or a rerun after a
    crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_output_dir(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it into place only if the block succeeds.

    On any exception the temporary folder is removed and ``target`` is untouched. Temporary folders
    left by a killed earlier run (its process is gone) are removed first, so a rerun starts clean.

    Raises:
        OutputExistsError: ``target`` exists and ``overwrite`` is false.
    """
    target = Path(target).resolve()
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"Output folder {target} already exists.",
            "Choose another output folder, or pass --overwrite to replace it.",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        if _stale_partial(stale):
            shutil.rmtree(stale, ignore_errors=True)
    temp = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    temp.mkdir()
    try:
        yield temp
        if target.exists():
            trash = target.parent / f".{target.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(target, trash)
            os.rename(temp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(temp, target)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(
                f"No space left on the device while writing {target}; nothing was written.",
                f"Free some space on the disk that holds {target.parent} (or write elsewhere) and rerun.",
            ) from exc
        raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def stamp_metadata(method: str | None = None, config_digest: str | None = None, **extra: str) -> dict[str, str]:
    """The metadata written into every safetensors header we produce. Never put a secret here."""
    metadata = {"format": "pt", "hf_mergeguard_version": __version__}
    if method:
        metadata["hf_mergeguard_method"] = method
    if config_digest:
        metadata["hf_mergeguard_config_digest"] = config_digest
    metadata.update({f"hf_mergeguard_{key}": str(value) for key, value in extra.items()})
    return metadata


def write_weights(
    folder: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    layout: Layout,
    *,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: int | str = "5GB",
) -> list[str]:
    """Stream ``tensors`` into safetensors shards (+ index) inside an existing ``folder``.

    Tensors may arrive in any order (a small reorder buffer keeps block-local reorderings cheap), but every
    name of ``layout`` must arrive exactly once with its spec. Returns the shard file names.
    """
    layout = dict(layout)
    shards = _plan_shards(layout, parse_size(max_shard_size))
    files = _shard_file_names(len(shards))
    metadata = dict(metadata or stamp_metadata())
    order = [name for shard in shards for name in shard]
    shard_of = {name: index for index, shard in enumerate(shards) for name in shard}
    rank = {name: index for index, name in enumerate(order)}
    buffer: dict[str, torch.Tensor] = {}
    position = 0
    writer: _ShardWriter | None = None
    try:
        # The tensors are produced (read, transformed) in a background thread while this one writes.
        for name, tensor in read_ahead(tensors):
            spec = layout.get(name)
            if spec is None or name in buffer or rank[name] < position:
                raise CheckpointError(f"Unexpected or repeated tensor {name!r} while writing {folder}.")
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise CheckpointError(
                    f"Tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, expected {spec.dtype} {spec.shape}."
                )
            assert_finite(name, tensor, " (about to be written)")
            buffer[name] = tensor
            while position < len(order) and order[position] in buffer:
                current = order[position]
                index = shard_of[current]
                if writer is None or writer.path.name != files[index]:
                    if writer is not None:
                        writer.close()
                    writer = _ShardWriter(folder / files[index], shards[index], layout, metadata)
                writer.write(buffer.pop(current))
                position += 1
        if position != len(order):
            raise CheckpointError(
                f"Tensors missing while writing {folder}: {', '.join(order[position:position + 5])}."
            )
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.handle.close()
    if len(files) > 1:
        index = {
            "metadata": {"total_size": sum(spec.nbytes for spec in layout.values()), **metadata},
            "weight_map": {name: files[shard_of[name]] for name in layout},
        }
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files


def write_checkpoint(
    target: str | os.PathLike,
    tensors: Iterable[tuple[str, torch.Tensor]],
    layout: Layout,
    *,
    companions_from: Checkpoint | None = None,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Write a complete model folder atomically.

    Args:
        target: the output folder (must not exist unless ``overwrite``).
        tensors: ``(name, tensor)`` pairs, streamed; see :func:`write_weights`.
        layout: name -> :class:`TensorSpec` of every tensor to write.
        companions_from: copy config/tokenizer/generation-config files from this checkpoint.
        config: a config dict to write as ``config.json`` (overrides the copied one).
        metadata: header metadata, see :func:`stamp_metadata`.
        max_shard_size: largest shard, e.g. ``"5GB"``.
        overwrite: replace an existing ``target``.
        extra_files: more small files to write into the folder (name -> text or bytes).
    """
    with atomic_output_dir(target, overwrite=overwrite) as folder:
        write_weights(folder, tensors, layout, metadata=metadata, max_shard_size=max_shard_size)
        if companions_from is not None:
            for file in companions_from.companion_files():
                shutil.copy2(file, folder / file.name)
        if config is not None:
            (folder / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
        for name, content in (extra_files or {}).items():
            path = folder / name
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return Path(target).resolve()


def save_model(
    model: torch.nn.Module,
    target: str | os.PathLike,
    *,
    tokenizer=None,
    companions_from: Checkpoint | None = None,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write an in-memory ``transformers`` model (and optionally its tokenizer) as a checkpoint folder."""
    tensors = model_state_dict(model)
    config = model.config.to_dict()
    extra: dict[str, str | bytes] = {}
    if tokenizer is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            for file in Path(tmp).iterdir():
                extra[file.name] = file.read_bytes()
    generation = getattr(model, "generation_config", None)
    if generation is not None and companions_from is None:
        extra["generation_config.json"] = generation.to_json_string()
    return write_checkpoint(
        target,
        tensors.items(),
        layout_of(tensors),
        companions_from=companions_from,
        config=_clean_config(config),
        metadata=metadata,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        extra_files=extra,
    )


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    """Drop runtime-only keys that ``to_dict`` adds (they are not part of a saved config.json)."""
    for key in ("_name_or_path", "transformers_version_runtime"):
        config.pop(key, None)
    return config
