"""Merge attacks: what a free-rider does with mergekit, with the coefficients a free-rider would try.

The math is mergekit 0.1.5's (``merge_state_dicts``), called one tensor at a time so that a merge never
holds more than the merged model plus one tensor per input; random methods (DARE, DELLA) are seeded per
tensor, so a merge is deterministic whatever the order or the number of processes. Every method a free-rider
would use is one :class:`MergeMethod` in :data:`MERGE_METHODS`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..errors import ConfigError
from ..io.sources import TensorSource
from ..registry import Registry

DEFENDER = "defender"
BASE = "base"
FREERIDER = "freerider0"
LAYER_SWAP = "layer_swap"
_SEED_STRIDE = 1_000_003  # another seed of a random method: far from the run's own seeds
# Methods that take a weight per input (mergekit's ``weight``), 1 each unless the grid sets it.
WEIGHTED = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear")


@dataclass(frozen=True)
class MergeMethod:
    """One merge method as a free-rider uses it.

    Args:
        name: our name (= mergekit's method name).
        coefficient: the parameter the attacker sweeps.
        grid: the values swept by default (``thorough_grid`` with ``--thorough``).
        fixed: other mergekit parameters, the same for every input.
        anchor: the input mergekit takes as ``base_model``: :data:`BASE` (the public base: task-vector methods,
            model_stock), :data:`DEFENDER` (slerp: t = 0 is the defender), :data:`FREERIDER` (arcee_fusion, nearswap:
            the free-rider takes in the defender's weights), or None (linear, karcher: no base).
        random: the method samples (DARE, DELLA, arcee_fusion's quantiles): seeded per tensor.
        per_model: ``coefficient`` is given per input model (weight, density) rather than shared (lambda, t).
        weight_split: ``coefficient`` is the defender's weight and the free-riders share the rest (linear, nuslerp).
        default: in the self-test by default; the others run with ``--thorough`` or when named in ``--methods``.
        label: how reports name the coefficient (``lambda=1``, ``w_def=0.5``); default: ``coefficient``.
    """

    name: str
    coefficient: str | None
    grid: tuple[float, ...]
    thorough_grid: tuple[float, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    anchor: str | None = "base"
    random: bool = False
    per_model: bool = False
    weight_split: bool = False
    default: bool = True
    description: str = ""
    label: str | None = None

    @property
    def uses_base(self) -> bool:
        return self.anchor == BASE

    def __post_init__(self):
        if self.label is None:
            object.__setattr__(self, "label", self.coefficient or "-")

    def values(self, thorough: bool = False) -> tuple[float | None, ...]:
        if self.coefficient is None:
            return (None,)
        return self.thorough_grid if thorough and self.thorough_grid else self.grid

    def extras(self, thorough: bool = False) -> list[dict[str, float]]:
        """What the attacker varies besides the main coefficient at each grid point (with ``--thorough``): the
        free-rider's and the defender's weights apart (weighted task-vector methods), TIES's lambda, and two more seeds
        of the random methods. ``{}``: the grid point as it is. One change at a time."""
        out: list[dict[str, float]] = [{}]
        if not thorough:
            return out
        if self.name in WEIGHTED:
            out += [{"rider_weight": 0.5}, {"defender_weight": 1.5}]
        if self.name in ("ties", "dare_ties", "breadcrumbs_ties", "della"):
            out.append({"lambda": 1.5})
        if self.random:
            out += [{"seed": 1}, {"seed": 2}]
        return out

    def parameters(self, value: float | None, others: Sequence[str], extra: Mapping[str, float] | None = None) -> dict[str, Any]:
        """mergekit parameters for one grid point (``others``: ids of the free-rider inputs; ``extra``: one of
        :meth:`extras`)."""
        params = self._parameters(value, others)
        extra = extra or {}
        if "rider_weight" in extra or "defender_weight" in extra:
            params["weight"] = {DEFENDER: extra.get("defender_weight", 1.0), **{o: extra.get("rider_weight", 1.0) for o in others}}
        if "lambda" in extra:
            params["lambda"] = extra["lambda"]
        return params

    def _parameters(self, value: float | None, others: Sequence[str]) -> dict[str, Any]:
        params = dict(self.fixed)
        if self.coefficient is None or value is None:
            return params
        if self.weight_split:
            # Weight averaging: the defender gets `value`, the free-riders share the rest.
            share = (1.0 - value) / max(1, len(others))
            params["weight"] = {DEFENDER: value, **{other: share for other in others}}
        elif self.per_model:
            params[self.coefficient] = {DEFENDER: value, **{other: value for other in others}}
        else:
            params[self.coefficient] = value
        if "weight" not in params and self.name in WEIGHTED:
            params["weight"] = {DEFENDER: 1.0, **{other: 1.0 for other in others}}
        return params


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method")

for _method in (
    MergeMethod(
        "task_arithmetic",
        "lambda",
        grid=(0.3, 0.5, 0.7, 0.8, 1.0, 1.2),
        thorough_grid=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2),
        description="theta_pre + lambda * (tau_def + tau_fr)",
    ),
    MergeMethod(
        "ties",
        "density",
        grid=(0.2, 0.5, 0.8),
        thorough_grid=(0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
        per_model=True,
        description="trim to top-density |tau|, elect signs, disjoint mean (normalize on)",
    ),
    MergeMethod(
        "dare_ties",
        "density",
        grid=(0.1, 0.3, 0.5),
        thorough_grid=(0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
        per_model=True,
        random=True,
        description="random drop with L1 rescale, then TIES sign election",
    ),
    MergeMethod(
        "dare_linear",
        "density",
        grid=(0.1, 0.3, 0.5),
        thorough_grid=(0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
        per_model=True,
        random=True,
        description="random drop with L1 rescale, then task arithmetic",
    ),
    MergeMethod(
        "breadcrumbs",
        "density",
        grid=(0.5, 0.8, 0.9),
        thorough_grid=(0.3, 0.5, 0.7, 0.8, 0.9),
        per_model=True,
        fixed={"gamma": 0.01},
        description="drop the largest 1% and smallest |tau|, then task arithmetic",
    ),
    MergeMethod(
        "della",
        "density",
        grid=(0.3, 0.5, 0.7),
        thorough_grid=(0.2, 0.3, 0.5, 0.7, 0.8),
        per_model=True,
        random=True,
        fixed={"epsilon": 0.1},
        description="magnitude-ranked random drop with rescale, then TIES",
    ),
    MergeMethod(
        "linear",
        "weight",
        grid=(0.3, 0.5, 0.7),
        thorough_grid=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
        anchor=None,
        weight_split=True,
        description="weight averaging of the fine-tunes (model soup)",
        label="w_def",
    ),
    MergeMethod(
        "model_stock",
        None,
        grid=(),
        description="interpolate the fine-tunes' average toward the base by their angle",
    ),
    MergeMethod(
        "slerp",
        "t",
        grid=(0.3, 0.5, 0.7),
        thorough_grid=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
        anchor=DEFENDER,
        description="spherical interpolation from the defender (t=0) to the free-rider (t=1)",
    ),
    MergeMethod(
        "breadcrumbs_ties",
        "density",
        grid=(0.5, 0.8, 0.9),
        thorough_grid=(0.3, 0.5, 0.7, 0.8, 0.9),
        per_model=True,
        fixed={"gamma": 0.01},
        description="breadcrumbs' trim (largest 1% and smallest |tau| dropped), then TIES sign election",
    ),
    MergeMethod(
        "della_linear",
        "density",
        grid=(0.3, 0.5, 0.7),
        thorough_grid=(0.2, 0.3, 0.5, 0.7, 0.8),
        per_model=True,
        random=True,
        fixed={"epsilon": 0.1},
        description="magnitude-ranked random drop with rescale, then task arithmetic",
    ),
    MergeMethod(
        "sce",
        "select_topk",
        grid=(0.1, 0.3, 1.0),
        thorough_grid=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
        description="keep the entries whose task vectors vary most (select_topk), elect signs by mass, weighted mean",
    ),
    MergeMethod(
        "nuslerp",
        "weight",
        grid=(0.3, 0.5, 0.7),
        thorough_grid=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
        weight_split=True,
        description="spherical interpolation of the task vectors, the defender weighted w_def",
        label="w_def",
    ),
    # Not in the default self-test (with --thorough, or named in --methods): variants of the ones above, or
    # methods free-riders rarely use to combine two skills.
    MergeMethod(
        "multislerp",
        "weight",
        grid=(0.3, 0.5, 0.7),
        thorough_grid=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
        weight_split=True,
        default=False,
        description="barycentric spherical interpolation of the task vectors, the defender weighted w_def",
        label="w_def",
    ),
    MergeMethod(
        "karcher",
        None,
        grid=(),
        anchor=None,
        default=False,
        description="the Riemannian (Karcher) mean of the two models' weights",
    ),
    MergeMethod(
        "arcee_fusion",
        None,
        grid=(),
        anchor=FREERIDER,
        random=True,
        default=False,
        description="the free-rider takes the defender's entries that differ most by importance (a dynamic threshold)",
    ),
    MergeMethod(
        "nearswap",
        "t",
        grid=(1e-4, 1e-3, 1e-2),
        thorough_grid=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
        anchor=FREERIDER,
        default=False,
        description="the free-rider's weights, moved to the defender's where the two are within t of each other",
    ),
    MergeMethod(
        "ram",
        None,
        grid=(),
        default=False,
        description="reinforced agent merging: task vectors averaged where they overlap, summed where one alone moved",
    ),
    MergeMethod(
        "ramplus_tl",
        None,
        grid=(),
        default=False,
        description="RAM+ with its defaults (r 0.1, alpha 0.2)",
    ),
    MergeMethod(
        LAYER_SWAP,
        "layers",
        grid=(0.25, 0.5, 0.75),
        thorough_grid=(0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875),
        anchor=None,
        default=False,
        description="passthrough layer swap: the first share of the decoder blocks from the defender, the rest and "
        "the embeddings, final norm and lm_head from the free-rider (mergekit passthrough with slices)",
        label="share_def",
    ),
):
    MERGE_METHODS.add(_method.name, _method)


def get_merge_method(name: str) -> MergeMethod:
    return MERGE_METHODS.get(name)


def parse_methods(names: str | Sequence[str] | None, thorough: bool = False) -> list[MergeMethod]:
    """``"ties,dare_ties"`` / ``["ties"]`` / ``"all"`` / ``None`` (the default ones; every one with ``thorough``) ->
    methods (typos get "did you mean")."""
    if names in ("all", ["all"]) or (names is None and thorough):
        return [MERGE_METHODS.get(n) for n in MERGE_METHODS.names()]
    if names is None:
        return [MERGE_METHODS.get(n) for n in MERGE_METHODS.names() if MERGE_METHODS.get(n).default]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return [MERGE_METHODS.get(name) for name in names]


def tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def merge_tensors(
    method: MergeMethod,
    value: float | None,
    *,
    base: TensorSource,
    defender: TensorSource,
    freeriders: Sequence[TensorSource],
    seed: int = 0,
    names: Sequence[str] | None = None,
    device: str | None = None,
    extra: Mapping[str, float] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the merged model one tensor at a time (mergekit's math on one tensor group per call).

    Args:
        method: the merge method.
        value: its swept coefficient at this grid point (``None`` for methods without one).
        base: the pretrained model the fine-tunes share.
        defender: the (protected or original) defender model.
        freeriders: the free-rider fine-tunes merged with it.
        seed: seed of random methods (DARE, DELLA), combined with each tensor's name.
        device: where the math runs (a GPU when the run has one: the merge does not wait on the host's cores). The
            random methods (DARE, DELLA) merge on the CPU whatever the device: their masks are the same on every
            machine.
        extra: one of the method's :meth:`~MergeMethod.extras` (asymmetric weights, lambda, another seed).
    """
    from mergekit.merge_methods import merge_state_dicts

    if method.name == "slerp" and len(freeriders) != 1:
        raise ConfigError("SLERP merges exactly two models: give one free-rider.")
    if method.name == "model_stock" and not freeriders:
        raise ConfigError("model_stock needs at least one free-rider beside the defender.")
    if method.anchor == FREERIDER and len(freeriders) != 1:
        raise ConfigError(f"{method.name} merges exactly two models: give one free-rider.")
    others = [f"freerider{i}" for i in range(len(freeriders))]
    params = method.parameters(value, others, extra)
    seed = seed + _SEED_STRIDE * int((extra or {}).get("seed", 0))
    inputs: dict[str, TensorSource] = {}
    if method.uses_base:
        inputs[BASE] = base
    inputs[DEFENDER] = defender
    inputs.update(zip(others, freeriders))
    if method.name == LAYER_SWAP:
        yield from _layer_swap(value, defender, freeriders, names)
        return
    for name in names if names is not None else defender.tensor_names:
        tensors = {key: {name: source.get(name)} for key, source in inputs.items()}
        on_device = device is not None and torch.device(device).type != "cpu" and not method.random
        if on_device:
            tensors = {key: {name: t.to(device) for name, t in group.items()} for key, group in tensors.items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tensor_seed(seed, name))
            with torch.no_grad():
                merged = merge_state_dicts(tensors, method.name, base=method.anchor, parameters=params)
        yield name, merged[name]


def _layer_swap(share: float, defender: TensorSource, freeriders: Sequence[TensorSource], names) -> Iterator[tuple[str, torch.Tensor]]:
    """mergekit's passthrough with slices, at the same depth: blocks [0, share x L) from the defender, the others
    and every tensor outside the blocks from the (first) free-rider."""
    from ..architectures import split_layer_name

    if len(freeriders) != 1:
        raise ConfigError("A layer swap takes its blocks from exactly two models: give one free-rider.")
    cut = round(share * defender.geometry.num_layers)
    for name in names if names is not None else defender.tensor_names:
        layer, _ = split_layer_name(name)
        yield name, (defender if layer is not None and layer < cut else freeriders[0]).get(name)


def merge_state_dict(method: MergeMethod, value: float | None, **kwargs) -> dict[str, torch.Tensor]:
    """The merged model in memory (see :func:`merge_tensors`)."""
    return dict(merge_tensors(method, value, **kwargs))
