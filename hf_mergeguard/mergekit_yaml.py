"""The ``merge`` utility command's engine: mergekit's own ``run_merge`` on a mergekit YAML config (the file a
free-rider would run with ``mergekit-yaml``), written atomically."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, UnknownNameError
from .io.atomic import atomic_output_dir


def load_mergekit_config(path: str | Path):
    """Read and validate a mergekit YAML config (the same files ``mergekit-yaml`` accepts)."""
    import yaml
    from mergekit.config import MergeConfiguration
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"Merge config {path} does not exist.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", "Fix the YAML syntax (indentation, colons).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping (merge_method, models, ...).")
    method = data.get("merge_method")
    from mergekit import merge_methods

    known = [m.spec.name for m in merge_methods.registered_methods()]
    if method not in known:
        raise UnknownNameError("merge method", str(method), known, hint=f"Fix merge_method in {path}.")
    try:
        return MergeConfiguration.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ConfigError(f"{path}: invalid merge config at {where or 'top level'}: {first.get('msg')}.") from None


def run_mergekit_config(
    config_path: str | Path, out: str | Path, *, overwrite: bool = False, seed: int | None = 0, device: str = "cpu"
) -> Path:
    """Run mergekit's ``run_merge`` on a YAML config, writing ``out`` atomically."""
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = load_mergekit_config(config_path)
    options = MergeOptions(device=device, random_seed=seed, quiet=True, copy_tokenizer=True, trust_remote_code=False)
    with atomic_output_dir(out, overwrite=overwrite) as folder:
        # mergekit keeps a process-wide cache of lazy loaders: a model rewritten at the same path would be
        # read stale on the next call. Start from an empty cache every time.
        LoaderCache().loaders.clear()
        try:
            run_merge(config, str(folder), options, config_source=Path(config_path).read_text())
        finally:
            LoaderCache().loaders.clear()
    return Path(out).resolve()
