"""``protect``'s configuration: one dataclass tree, loadable from YAML, overridable from the CLI.

Precedence: defaults < ``--config protect.yml`` < command-line flags. Unknown keys are errors with a
"did you mean". The resolved configuration is written to ``protect_config.yml`` in the output folder (never
a token).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .protect.function_preserving import MergeBarrierConfig, MergeLockConfig, ParamsConfig
from .protect.mergeguard import MergeGuardConfig
from .protect.trap import TrapConfig
from .selftest import SelfTestOptions


@dataclass
class ProtectSelfTestOptions(SelfTestOptions):
    """``protect``'s self-test: the adaptive attacks are on by default (``--no-adaptive`` for speed)."""

    adaptive: bool = True


@dataclass
class ProtectConfig:
    """Everything ``protect`` does, in one place (the YAML file mirrors it)."""

    model: str | None = None
    base: str | None = None
    output_dir: str | None = None
    method: str = "mergeguard"
    tasks: list[str] = field(default_factory=list)
    include_tasks: list[str] = field(default_factory=list)
    train_data: str | None = None
    train_split: str = "train"
    merge_with: list[str] = field(default_factory=list)
    freerider_tasks: list[str] = field(default_factory=list)
    revision: str | None = None
    base_revision: str | None = None
    overwrite: bool = False
    push_to: str | None = None
    create_pr: bool = True
    private: bool = False
    force: bool = False
    work_dir: str | None = None
    device: str | None = None
    seed: int = 0
    key_file: str | None = None
    mergeguard: MergeGuardConfig = field(default_factory=MergeGuardConfig)
    trap: TrapConfig = field(default_factory=TrapConfig)
    params: ParamsConfig = field(default_factory=ParamsConfig)
    mergelock: MergeLockConfig = field(default_factory=MergeLockConfig)
    mergebarrier: MergeBarrierConfig = field(default_factory=MergeBarrierConfig)
    selftest: ProtectSelfTestOptions = field(default_factory=ProtectSelfTestOptions)

    def validate(self) -> None:
        missing = [name for name in ("model", "base", "output_dir") if not getattr(self, name)]
        if missing:
            flags = {"model": "MODEL (first argument)", "base": "--base", "output_dir": "--output-dir"}
            raise ConfigError(
                "Missing " + ", ".join(flags[m] for m in missing) + ".", "Give them on the command line or in --config."
            )
        if not self.tasks:
            raise ConfigError("No --tasks given: the self-test needs the defender's tasks.", "e.g. --tasks gsm8k")
        if self.freerider_tasks and len(self.freerider_tasks) not in (1, len(self.merge_with)):
            raise ConfigError("Give one --freerider-tasks per --merge-with (in order), or one for all.")
        from .errors import TrainDataError

        if "trap" in self.method:
            if not self.train_data:
                raise TrainDataError("The merge trap trains on the defender's data.", "Pass --train-data (a JSONL file or a Hub dataset).")
            self.trap.check_runnable()
        if "mergeguard" in self.method and not self.train_data:
            needs = [] if self.mergeguard.skip_stage1 else ["stage 1 trains on it"]
            if self.mergeguard.criticality == "fast":
                needs.append("fast criticality takes its calibration set from it")
            if needs:
                raise TrainDataError(
                    f"MergeGuard needs the defender's training data ({'; '.join(needs)}).",
                    "Pass --train-data (a JSONL file or a Hub dataset), or --skip-stage1 --criticality exact to do without.",
                )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where) if len(inner) == 1 else value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of options, not {value!r}.")
        return from_dict(tp, value, where)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, not {value!r}.")
        return [str(v) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}.")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where} must be a number ({tp.__name__}), not {value!r}.")
        return tp(value)
    if tp is str:
        return str(value)
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data`` (nested dicts for nested dataclasses), checking every key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        key_name = str(key).replace("-", "_")
        if key_name not in names:
            close = difflib.get_close_matches(key_name, names, n=1)
            raise ConfigError(
                f"Unknown option {where}.{key}." + (f" Did you mean {close[0]!r}?" if close else ""),
                f"Options of {where}: {', '.join(names)}.",
            )
        kwargs[key_name] = _coerce(value, hints[key_name], f"{where}.{key_name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"Invalid {where}: {exc}") from None


def load_yaml_config(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", "Fix the YAML syntax (indentation, colons, quotes).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of options (model:, base:, tasks:, ...).")
    return data


def merge_dicts(base: dict, override: dict) -> dict:
    """Recursive dict update: nested sections merge, other values replace."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def build_protect_config(config_file: str | Path | None, overrides: dict) -> ProtectConfig:
    """Defaults < YAML file < ``overrides`` (the flags the user gave; None values are ignored)."""
    data = load_yaml_config(config_file) if config_file else {}
    data = merge_dicts(data, _drop_none(overrides))
    return from_dict(ProtectConfig, data, "config")


def _drop_none(data: dict) -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None and value != []:
            out[key] = value
    return out


def dump_yaml(config: ProtectConfig) -> str:
    import yaml

    return "# hf-mergeguard protect configuration (as resolved for this run)\n" + yaml.safe_dump(config.to_dict(), sort_keys=False)
