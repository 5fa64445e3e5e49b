"""The configuration of ``check``, ``attack`` and ``protect``: one dataclass tree, loadable from YAML, overridable by flags.

Precedence: defaults < ``--config protect.yml`` < command-line flags. Unknown keys are errors with a "did you mean".
Every option is declared once, on its dataclass field (``metadata={"help": ..., "flag": ...}``): the CLI's flags are
built from these fields (:mod:`hf_mergeguard.cli.config_flags`), and each registered defense's options are a section
of their own (``mergeguard:``, ``trap:``, ...). The resolved configuration of a run is written to
``protect_config.yml`` in the output folder (never a token).
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
from .protect.base import DEFENSES
from .protect.stack import apply_presets, stack, stack_order
from .selftest.config import SelfTestConfig
from .training import RunConfig

# Options that change where the result goes, not what it is (they do not key the work folder).
RELEASE_ONLY_OPTIONS = ("output_dir", "overwrite", "work_dir", "push_to", "create_pr", "private", "force", "key_file")


def _option(default=None, help: str = "", flag: str | tuple | None = None, **more):
    metadata = {"help": help, **({"flag": flag} if flag else {}), **more}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelInputs:
    """What is tested: the model and its base, the tasks that measure its skill, the free-riders, the defender's data."""

    model: str | None = _option(None, "the fine-tuned model (folder or Hub repo id)")
    base: str | None = _option(None, "the base model it was fine-tuned from (folder or Hub repo id)", "--base")
    revision: str | None = _option(None, "branch, tag or commit of a Hub MODEL", "--revision")
    base_revision: str | None = _option(None, "branch, tag or commit of a Hub --base", "--base-revision")
    tasks: list[str] = _option([], "comma-separated lm-eval tasks of the model's skill, e.g. gsm8k,humaneval", ("--tasks", "-t"))
    include_tasks: list[str] = _option(
        [], "folder of extra lm-eval task YAMLs (lm-eval's include_path); repeatable", "--include-tasks", repeatable=True
    )
    task_data: list[str] = _option(
        [],
        "TASK=PATH: score a built-in task (e.g. gsm8k, humaneval) on local rows in the dataset's own format: a "
        ".jsonl/.parquet file of its test split, or a folder of split files as the Hub lays them out; repeatable",
        "--task-data",
        repeatable=True,
    )
    merge_with: list[str] = _option(
        [], "a free-rider model (folder or repo id) merged with MODEL; repeatable", "--merge-with", repeatable=True
    )
    freerider_tasks: list[str] = _option(
        [],
        "tasks measuring a --merge-with model's own skill (one per --merge-with, in order); repeatable",
        "--freerider-tasks",
        repeatable=True,
    )
    train_data: str | None = _option(
        None, "defender's data: JSONL (question/answer, prompt/completion or text) or a Hub dataset name[:config]", "--train-data"
    )
    train_split: str = _option("train", "split of a Hub --train-data", "--train-split")
    train_format: str = _option(
        "auto",
        "how --train-data rows become prompts: auto (as the first of --tasks that reads them shows them, else fixed), "
        "a task name, or fixed (prompt/completion as given, question/answer as lm-eval's gsm8k prompt)",
        "--train-format",
    )
    train_fewshot: int = _option(0, "few-shot examples of the task put before each training row, as evaluation does", "--train-fewshot")
    data_check: bool = _option(
        True,
        "refuse, before any work, a fine-tune whose loss on its --train-data is not below the base's (format or file mismatch)",
        "--data-check/--no-data-check",
    )

    def check_inputs(self) -> None:
        if not self.tasks:
            raise ConfigError("No --tasks given: the self-test needs the defender's tasks.", "e.g. --tasks gsm8k")
        if self.freerider_tasks and len(self.freerider_tasks) not in (1, len(self.merge_with)):
            raise ConfigError("Give one --freerider-tasks per --merge-with (in order), or one for all.")
        if self.train_fewshot < 0:
            raise ConfigError(f"--train-fewshot {self.train_fewshot} is negative.", "Give 0 (each row alone) or more.")


@dataclass
class CheckConfig(ModelInputs):
    """``check`` and ``attack``: a model as it is, self-tested."""

    run: RunConfig = field(default_factory=RunConfig)
    selftest: SelfTestConfig = field(default_factory=SelfTestConfig)


def _defense_sections() -> dict[str, Any]:
    return {spec.name: spec.options() for spec in DEFENSES.values()}


@dataclass
class ProtectConfig(CheckConfig):
    """Everything ``protect`` does (the YAML file mirrors it; each defense's options are a top-level section).

    ``config.trap``, ``config.mergeguard``, ...: the options of each registered defense (``config.defenses[name]``).
    """

    method: str = _option(
        # The merge trap: of every defense at its defaults, the one merges keep least of (docs/results.md, "The merge
        # trap against the attack family"); MergeGuard's default flip is undone by signrestore.
        "trap",
        "the defense, or a stack joined by + (e.g. trap+mergeguard), applied in the order listed",
        "--method",
        choices=stack_order,
    )
    output_dir: str | None = _option(None, "where the protected model and its report go", ("--output-dir", "-o"))
    overwrite: bool = _option(False, "replace --output-dir if it exists", "--overwrite")
    push_to: str | None = _option(
        None, "Hub repo (ORG/NAME) to push weights, card, plot and selftest.json to, in one commit, only if every gate passed", "--push-to"
    )
    create_pr: bool = _option(True, "push as a pull request, or commit to main directly", "--create-pr/--no-create-pr")
    private: bool = _option(False, "create the --push-to repo as private", "--private")
    force: bool = _option(False, "push even if a gate failed (the card then says so in a warning)", "--force")
    key_file: str | None = _option(
        None,
        "params/mergelock/mergebarrier: where the owner's key goes (default: OUT.key.safetensors "
        "beside --output-dir; never inside it, never pushed)",
        "--key-file",
    )
    work_dir: str | None = _option(None, "folder of resumable steps (default: the cache, keyed by the configuration)", "--work-dir")
    selftest: SelfTestConfig = field(default_factory=lambda: SelfTestConfig(adaptive=True))  # the attacks on by default
    defenses: dict[str, Any] = field(default_factory=_defense_sections, metadata={"sections": True})

    def __post_init__(self):
        apply_presets(self.method, self.defenses)

    def __getattr__(self, name: str):
        defenses = self.__dict__.get("defenses")
        if defenses is not None and name in defenses:
            return defenses[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def validate(self) -> None:
        """Everything that can be checked before any work: required options, and each defense of the stack."""
        missing = [name for name in ("model", "base", "output_dir") if not getattr(self, name)]
        if missing:
            flags = {"model": "MODEL (first argument)", "base": "--base", "output_dir": "--output-dir"}
            raise ConfigError("Missing " + ", ".join(flags[m] for m in missing) + ".", "Give them on the command line or in --config.")
        self.check_inputs()
        for spec in stack(self.method):
            if spec.check is not None:
                spec.check(self.defenses[spec.name], self.run, bool(self.train_data))

    def to_dict(self) -> dict:
        """The YAML layout: each defense's section at the top level."""
        data = dataclasses.asdict(self)
        return {**{k: v for k, v in data.items() if k != "defenses"}, **data["defenses"]}


# --------------------------------------------------------------------------------------------------------
# From YAML and flags
# --------------------------------------------------------------------------------------------------------


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
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (tp is int and isinstance(value, float) and not value.is_integer())
        ):
            raise ConfigError(f"{where} must be a number ({tp.__name__}), not {value!r}.")
        return tp(value)
    if tp is str:
        return str(value)
    return value


def _dataclass_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of ``cls`` when it is a dataclass instance (from its default factory), else None."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return default if dataclasses.is_dataclass(default) and not isinstance(default, type) else None


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data`` (nested dicts for nested dataclasses), checking every key.

    A field marked ``sections`` (``ProtectConfig.defenses``) takes the top-level keys named after registered
    defenses, each parsed with that defense's options class.
    """
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    sections = next((f.name for f in fields if f.metadata.get("sections")), None)
    names = [f.name for f in fields if f.name != sections]
    known = names + (DEFENSES.names() if sections else [])
    kwargs: dict[str, Any] = {}
    chosen_sections: dict[str, Any] = {}
    for key, value in data.items():
        key_name = str(key).replace("-", "_")
        if sections and key_name in DEFENSES:
            chosen_sections[key_name] = _coerce(value, DEFENSES.get(key_name).options, f"{where}.{key_name}")
            continue
        if key_name not in names:
            close = difflib.get_close_matches(key_name, known, n=1)
            raise ConfigError(
                f"Unknown option {where}.{key}." + (f" Did you mean {close[0]!r}?" if close else ""),
                f"Options of {where}: {', '.join(known)}.",
            )
        default = _dataclass_default(cls, key_name)
        if default is not None and isinstance(value, dict):
            # A section given in part keeps the rest of this field's own defaults (``selftest.adaptive`` is on in
            # protect, off in check: one class, two defaults).
            value = merge_dicts(dataclasses.asdict(default), value)
        kwargs[key_name] = _coerce(value, hints[key_name], f"{where}.{key_name}")
    if sections:
        kwargs[sections] = {**_defense_sections(), **chosen_sections}
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


def build_config(cls: type, config_file: str | Path | None, overrides: dict) -> Any:
    """Defaults < YAML file < ``overrides`` (the flags the user gave; None values are ignored)."""
    data = load_yaml_config(config_file) if config_file else {}
    return from_dict(cls, merge_dicts(data, _drop_none(overrides)), "config")


def build_protect_config(config_file: str | Path | None, overrides: dict) -> ProtectConfig:
    return build_config(ProtectConfig, config_file, overrides)


def dump_yaml(config: ProtectConfig) -> str:
    import yaml

    return "# hf-mergeguard protect configuration (as resolved for this run)\n" + yaml.safe_dump(config.to_dict(), sort_keys=False)
