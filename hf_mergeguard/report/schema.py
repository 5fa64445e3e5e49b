"""The self-test report as typed data (``selftest.json``), in the way of lm-eval's ``result_schema.py``.

Numbers only: every display string (tables, the card) is made from these by :mod:`.table` and :mod:`hf_mergeguard.card`.
Scores are shares in [0, 1] (100 x a score is "points"); a *kept* share is ``(score - base) / (reference - base)`` on the
defender's tasks, the reference being the unprotected fine-tune when known (``protect``), else the model itself
(``check``); it is ``None`` when the reference is not above the base (nothing to keep).

Version history: 1, the untyped report (robustness rows stored display strings); 2, this schema.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SELFTEST_FILE = "selftest.json"
SCHEMA_VERSION = 2

# Field metadata: an optional section written only when present (``None`` fields are left out of the JSON).
OPTIONAL = {"optional": True}
# Field metadata: kept in memory for the caller, never written (e.g. a model an attack produced).
IN_MEMORY = {"in_memory": True}


def _optional(default=None):
    return field(default=default, metadata=OPTIONAL)


@dataclass
class MergeResult:
    """One merge of the matrix: a defender variant merged with one free-rider by one method at one coefficient."""

    variant: str  # "original" (the unprotected fine-tune) or "protected"
    method: str
    value: float | None  # the swept coefficient (None for methods without one)
    freerider: int  # index into sources.freeriders
    scores: dict[str, float]  # every task, defender's and free-rider's
    defender_score: float  # mean over the defender's tasks
    freerider_kept: float | None  # share of the free-rider's own gain kept (None: it has no tasks)
    defender_kept: float | None  # share of the defender's gain kept
    # The attacker's search on a budget dropped it after this many prompts (of its first task): its scores are over
    # those prompts only, and it is never an attacker's best. None: scored on every prompt.
    prompts: int | None = None
    # Tasks whose outputs were all empty or a repetition on the first prompts scored: scored on those alone.
    degenerate: list[str] = field(default_factory=list)
    # The free ride: the smaller of the two kept shares (a merge that loses either skill is no free ride).
    free_ride: float | None = _optional()
    # Besides the swept coefficient (--thorough): rider_weight, defender_weight, lambda or seed.
    extra: dict[str, float] | None = _optional()


@dataclass
class BestMerge:
    """The attacker's best merge of one method for one variant: the grid point that keeps the most of the defender's
    skill among those that keep at least ``freerider_floor`` of the free-rider's own gain (else the best of all)."""

    value: float | None
    freerider: int
    scores: dict[str, float]
    defender_score: float
    defender_kept: float | None
    freerider_kept: float | None
    freerider_constraint_met: bool  # False: no grid point kept the free-rider's skill; the best of all counts
    best_any_value: float | None  # the best grid point ignoring the free-rider's skill
    best_any_defender_score: float
    free_ride: float | None = _optional()  # of the attacker's best: min(defender_kept, freerider_kept)
    # The grid point with the largest free ride (among those scored on every prompt), and that free ride.
    best_free_ride_value: float | None = _optional()
    best_free_ride: float | None = _optional()
    # The attacker's best's defender score as a share of the protected model's own gain (defender_kept is of the
    # original's, when known): how much of what the release still does the merge keeps.
    defender_kept_of_protected: float | None = _optional()
    extra: dict[str, float] | None = _optional()  # the attacker's best's asymmetric weights, lambda or seed


@dataclass
class Gate:
    """One pass/fail criterion of the verdict."""

    value: float | None
    threshold: float
    unit: str  # "points" or "share of the defender's skill gain over the base"
    passed: bool
    per_task: dict[str, float] | None = _optional()  # standalone drop: points lost per task
    worst_method: str | None = _optional()  # merged retention: the method whose best merge keeps the most
    worst_attack: str | None = _optional()  # adaptive retention: the attack credited with the most
    note: str | None = _optional()


@dataclass
class Floor:
    """The base model: the floor every kept share is measured from."""

    defender_score: float
    scores: dict[str, float]


@dataclass
class FreeRiderSource:
    model: str
    tasks: list[str]


@dataclass
class Sources:
    base: str
    protected: str
    original: str | None
    freeriders: list[FreeRiderSource]


@dataclass
class ProtectionRecord:
    """One defense of the stack: what may be published about it, and what it recorded (never a key)."""

    method: str
    public_parameters: dict[str, Any]
    details: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # where it ran weaker than its strong setting (the card says so)


@dataclass
class Inputs:
    """What ``protect`` was given, resolved (Hub revisions as commit hashes)."""

    model: str
    model_revision: str | None
    base: str
    base_revision: str | None
    license: str | None
    # the defender's data: rows, how they were formatted, and the pre-flight's losses (fine-tune vs base)
    train_data: dict | None = _optional()
    # The Hub datasets the run read: the training data when it is one, and the defender's tasks' datasets (the card's
    # `datasets`); local files are left out.
    datasets: list[str] | None = _optional()


@dataclass
class Release:
    """Where the release went: its name on the Hub (or the folder's), and whether the push was forced past a gate."""

    name: str
    forced: bool
    url: str | None = _optional()


@dataclass
class ScoredModel:
    """A model an attack produced (its best result), scored like the self-test's merges."""

    defender_score: float
    defender_kept: float | None
    freerider: int | None = None
    freerider_kept: float | None = None
    scores: dict[str, float] | None = _optional()
    method: str | None = _optional()  # the merge method the result came from, when there is one
    value: float | None = _optional()  # and its coefficient
    freerider_constraint_met: bool | None = _optional()
    free_ride: float | None = _optional()  # min(defender_kept, freerider_kept)


@dataclass
class AttackResult:
    """One adaptive attack: the attacker's best result and the share of the defender's gain counted against the
    defense (``credited``; fine-tuning attacks: only what they reach beyond their examples alone)."""

    attack: str
    best: ScoredModel
    credited: float | None
    defeats: bool = False  # credited above the gate's threshold (set by the self-test)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # what the attack tried, its setup, its notes
    model: Any = field(default=None, metadata=IN_MEMORY)  # a model it produced that the caller may write


@dataclass
class Robustness:
    """The adaptive attacks after the merges: a free-rider who knows the defense tries to undo it."""

    attacks: dict[str, AttackResult]
    threshold: float  # an attack defeats the defense when its credited share is above this
    floor: float  # the base's defender score
    unprotected: float | None  # the best unprotected merge's defender score (when the original is known)

    @property
    def defeated_by(self) -> list[str]:
        return [name for name, result in self.attacks.items() if result.defeats]


@dataclass
class SelfTestReport:
    """Everything a self-test measured, and its verdict."""

    schema_version: int
    tool_version: str
    created: str
    config: dict[str, Any]  # the self-test's options as run, with its tasks, task folders and seed
    tasks: list[str]  # the defender's tasks
    metrics: dict[str, str]  # each task's metric (lm-eval's name)
    standalone: dict[str, dict[str, float]]  # "base", "original", "protected", "freerider<i>" -> task -> score
    floor: Floor
    merges: list[MergeResult]
    best: dict[str, dict[str, BestMerge]]  # method -> variant -> the attacker's best merge
    gates: dict[str, Gate]
    passed: bool
    sources: Sources
    command: str | None = _optional()  # "protect" or "check"
    method: str | None = _optional()  # the protection method (protect)
    protection: list[ProtectionRecord] | None = _optional()
    inputs: Inputs | None = _optional()
    versions: dict[str, str | None] | None = _optional()
    protect_seconds: float | None = _optional()
    synthetic_freerider: dict[str, Any] | None = _optional()
    robustness: Robustness | None = _optional()
    # The headline: the merge (variant "protected", any method) with the largest free ride, as {method, value,
    # free_ride, defender_kept, freerider_kept}; None when no merge has both shares.
    free_ride: dict[str, Any] | None = _optional()
    release: Release | None = _optional()

    @property
    def with_original(self) -> bool:
        return "original" in self.standalone

    def failed_gates(self) -> list[str]:
        return [name for name, gate in self.gates.items() if not gate.passed]

    def with_robustness(self, robustness: Robustness, gate: Gate) -> SelfTestReport:
        """This report with its robustness section and the adaptive gate among its gates."""
        gates = {**self.gates, "adaptive_retention": gate}
        return dataclasses.replace(self, robustness=robustness, gates=gates, passed=all(g.passed for g in gates.values()))

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> SelfTestReport:
        return from_dict(cls, data)


def load_report(path: str | Path) -> SelfTestReport:
    """Read a ``selftest.json``; a report of another schema version is refused with the fix."""
    path = Path(path)
    data = json.loads(path.read_text())
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{path} has report schema version {version}; this hf-mergeguard reads version {SCHEMA_VERSION}.",
            "Rerun protect (or check) with this version to write the report again.",
        )
    return SelfTestReport.from_dict(data)


# --------------------------------------------------------------------------------------------------------
# Dataclasses <-> JSON-ready dicts
# --------------------------------------------------------------------------------------------------------


def to_dict(value: Any) -> Any:
    """A dataclass tree as plain dicts and lists (optional fields that are ``None`` and in-memory fields left out)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.metadata.get("in_memory") or (f.metadata.get("optional") and item is None):
                continue
            out[f.name] = to_dict(item)
        return out
    if isinstance(value, dict):
        return {key: to_dict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_dict(item) for item in value]
    return value


def from_dict(cls: type, data: Any) -> Any:
    """The dataclass ``cls`` (or typed container) from what :func:`to_dict` wrote; unknown keys are ignored."""
    return _convert(data, cls)


def _convert(value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0]) if len(inner) == 1 else value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        return tp(**{key: _convert(item, hints[key]) for key, item in value.items() if key in names})
    if origin is dict:
        return {key: _convert(item, args[1]) for key, item in value.items()}
    if origin is list:
        return [_convert(item, args[0]) for item in value]
    return value
