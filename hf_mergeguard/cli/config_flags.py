"""Command-line flags built from the configuration dataclasses, so that every option is declared once.

A field with ``metadata={"help": ..., "flag": "--name"}`` is a flag; its default, type and help come from the field.
A flag declared on several fields (``--steps`` on MergeGuard's stage 1 and on the trap, ``--seed`` on the run and on
every training stage) sets all of them. Flags are ``None`` when not given, so that a ``--config`` file and the
defaults show through (defaults < YAML < flags, see :func:`hf_mergeguard.config.build_config`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import typer


@dataclass
class ConfigFlag:
    """One command-line flag and the configuration fields it sets."""

    param: str  # the Python parameter name typer passes it as
    decls: tuple[str, ...]  # ("--trap-weight",), ("--tasks", "-t"), ("--stage1/--skip-stage1",)
    paths: list[tuple[str, ...]]  # where its value goes in the configuration's nested dict
    annotation: Any
    help: str
    defaults: list[Any]
    negate: bool = False  # "--stage1" sets skip_stage1 to False
    label: str = ""  # the section it sets, when it sets one field only ("trap: ")

    def option(self) -> Any:
        return typer.Option(None, *self.decls, help=self.full_help(), show_default=False)

    def full_help(self) -> str:
        label = self.label if len(self.paths) == 1 else ""
        return f"{label}{self.help}{self._default_note()}."

    def _default_note(self) -> str:
        if "/" in self.decls[0]:  # a pair of switches: name the one in effect by default
            on, off = self.decls[0].split("/")
            enabled = bool(self.defaults[0]) != self.negate
            return f" (default: {on if enabled else off})"
        shown = [(path, value) for path, value in zip(self.paths, self.defaults) if not _unset(value)]
        if not shown:
            return ""
        if len({repr(value) for _, value in shown}) == 1:
            return f" (default: {_shown(shown[0][1])})"
        return " (default: " + "; ".join(f"{'.'.join(path[:-1])} {_shown(value)}" for path, value in shown) + ")"


def _unset(value: Any) -> bool:
    return value is None or value is False or value == [] or value == ""


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


def _cli_type(tp: Any, repeatable: bool) -> Any:
    """The typer annotation for a field of type ``tp`` (always optional: None means "not given")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is not None and type(None) in args:
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is list:
        return Optional[List[str]] if repeatable else Optional[str]  # a comma-separated list
    return Optional[tp]


def config_flags(defaults: Any, section_label: Callable[[tuple[str, ...]], str | None] = lambda path: None) -> list[ConfigFlag]:
    """Every flag that the configuration ``defaults`` (an instance: its values are the defaults) declares.

    Args:
        section_label: a prefix for the help of a flag whose field lives under ``path`` (e.g. ``"trap: "``).
    """
    found: dict[tuple[str, ...], ConfigFlag] = {}

    def walk(obj: Any, path: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("sections"):  # one section per defense, at the top level
                for name, section in value.items():
                    walk(section, (name,))
            elif dataclasses.is_dataclass(value):
                walk(value, path + (f.name,))
            elif "flag" in f.metadata:
                decls = f.metadata["flag"] if isinstance(f.metadata["flag"], tuple) else (f.metadata["flag"],)
                flag = found.get(decls)
                if flag is None:
                    choices = f.metadata.get("choices")
                    help_text = f.metadata.get("help", "") + (f" ({' | '.join(choices())})" if choices else "")
                    name = decls[0].split("/")[0].lstrip("-").replace("-", "_")
                    found[decls] = ConfigFlag(
                        name,
                        decls,
                        [path + (f.name,)],
                        _cli_type(hints[f.name], f.metadata.get("repeatable", False)),
                        help_text,
                        [value],
                        negate=f.metadata.get("negate", False),
                        label=section_label(path) or "",
                    )
                else:  # the same flag on another field: it sets both
                    flag.paths.append(path + (f.name,))
                    flag.defaults.append(value)

    walk(defaults, ())
    return list(found.values())


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def with_config_flags(
    defaults: Callable[[], Any],
    *,
    exclude: tuple[str, ...] = (),
    rename: dict[str, str] | None = None,
    section_label: Callable[[tuple[str, ...]], str | None] = lambda path: None,
):
    """Decorate a typer command: add one option per flag of the configuration ``defaults()`` makes, and call the command
    with ``overrides``, the nested dict of the flags that were given.

    Args:
        exclude: flags (their first declaration) the command does not offer.
        rename: flags the command offers under another name (``{"--attacks": "--kind"}``).
    """

    def decorate(command):
        flags = [flag for flag in config_flags(defaults(), section_label) if flag.decls[0] not in exclude]
        for flag in flags:
            if rename and flag.decls[0] in rename:
                flag.decls = (rename[flag.decls[0]],)
                flag.param = flag.decls[0].lstrip("-").replace("-", "_")
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "overrides"]
        params = own + [
            inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY, default=flag.option(), annotation=flag.annotation)
            for flag in flags
        ]

        @functools.wraps(command)
        def wrapper(**kwargs):
            overrides: dict = {}
            for flag in flags:
                value = kwargs.pop(flag.param, None)
                if value is not None:
                    for path in flag.paths:
                        _set(overrides, path, (not value) if flag.negate else value)
            return command(**kwargs, overrides=overrides)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def option_of(cls: type, name: str, *, required: bool = False, default: Any = None) -> Any:
    """A typer option for one field of a configuration class, for commands that are not built from a whole config."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    decls = f.metadata["flag"] if isinstance(f.metadata["flag"], tuple) else (f.metadata["flag"],)
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    note = f" (default: {_shown(value)})" if not _unset(value) and not required else ""
    return typer.Option(... if required else default, *decls, help=f"{f.metadata['help']}{note}.", show_default=False)
