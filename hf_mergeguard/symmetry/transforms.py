"""The exact symmetries of a Llama-family decoder block, shared by the function-preserving defenses.

A :class:`BlockTransform` re-parameterises one decoder block without changing what it computes:

* **MLP (SwiGLU)**: a permutation of the intermediate neurons (rows of ``gate_proj`` and ``up_proj``, columns of
  ``down_proj``) and a positive scale ``s_i`` on ``up_proj`` row i with ``1/s_i`` on ``down_proj`` column i (never
  on ``gate_proj``: SiLU is not homogeneous).
* **QK**: per KV group a matrix ``A`` on the q rows of every query head of the group and ``A^-T`` on the group's
  k rows, so q.k is unchanged. RoPE (HF ``rotate_half``: dim j pairs with j + rotary_dim/2) rotates each pair by
  a position-dependent angle, so ``A`` must commute with every such rotation: per pair a *scaled 2x2 rotation*
  ``r [[cos, -sin], [sin, cos]]`` (its inverse-transpose is the same rotation scaled by 1/r). Dimensions past
  ``rotary_dim`` (partial rotary) take any invertible block. A dense random ``A`` breaks the model.
* **QK-norm** (Qwen3): q and k are RMS-normalised per head before RoPE, so the weights only admit pair-constant
  sign flips (``A`` = diag(+-1)); a pair-constant diagonal ``d`` folds into ``q_norm`` (and ``1/d`` into ``k_norm``).
* **VO**: per KV head a matrix ``B`` on the v rows and ``B^-1`` on the o_proj columns of every query head of the
  group (GQA: query head h reads KV head h // group_size).
* Biases get the same left factor as their weight rows; the residual stream (embeddings, norms, lm_head) is
  untouched, so tied embeddings stay tied.

Everything is computed in float64 and cast back to the tensor's dtype, one tensor (or chunk of a large one) at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..architectures import Geometry, split_layer_name

_PARTS = ("mlp_permutation", "mlp_scale", "qk", "vo", "qk_norm_scale")
# Tensors larger than this many entries are transformed in chunks (see transform_tensor).
_CHUNK_ELEMENTS = 1 << 21
_RIGHT_ACTING = ("self_attn.o_proj", "mlp.down_proj")


@dataclass
class BlockTransform:
    """An exact re-parameterisation of one decoder block; a part left ``None`` is the identity.

    Attributes:
        mlp_permutation: ``[intermediate]`` long; new neuron i is old neuron ``mlp_permutation[i]``.
        mlp_scale: ``[intermediate]`` positive; multiplies ``up_proj`` row i (after the permutation), divides
            ``down_proj`` column i.
        qk: ``[num_kv_heads, head_dim, head_dim]``; ``A_g`` on the q rows of group g, ``A_g^-T`` on its k rows.
        vo: ``[num_kv_heads, head_dim, head_dim]``; ``B_g`` on the v rows of KV head g, ``B_g^-1`` on the o_proj
            columns of every query head of group g.
        qk_norm_scale: ``[head_dim]`` pair-constant; multiplies ``q_norm``'s gain, divides ``k_norm``'s.
    """

    mlp_permutation: torch.Tensor | None = None
    mlp_scale: torch.Tensor | None = None
    qk: torch.Tensor | None = None
    vo: torch.Tensor | None = None
    qk_norm_scale: torch.Tensor | None = None

    def inverse(self) -> BlockTransform:
        """The transform that undoes this one (apply it to the protected tensors to get the originals)."""
        permutation = scale = None
        if self.mlp_permutation is not None:
            permutation = torch.argsort(self.mlp_permutation)
        if self.mlp_scale is not None:
            scale = 1.0 / self.mlp_scale.double()
            if permutation is not None:
                scale = scale[permutation]
        return BlockTransform(
            mlp_permutation=permutation,
            mlp_scale=scale,
            qk=None if self.qk is None else torch.linalg.inv(self.qk.double()),
            vo=None if self.vo is None else torch.linalg.inv(self.vo.double()),
            qk_norm_scale=None if self.qk_norm_scale is None else 1.0 / self.qk_norm_scale.double(),
        )

    def parts(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _PARTS if getattr(self, name) is not None}

    @classmethod
    def from_parts(cls, parts: Mapping[str, torch.Tensor]) -> BlockTransform:
        return cls(**{name: parts.get(name) for name in _PARTS})

    def check(self, geometry: Geometry, layer: int) -> None:
        """Raise ``ValueError`` if a part has the wrong shape for ``geometry`` (a key for another model)."""
        kv, hd, inter = geometry.num_kv_heads, geometry.head_dim, geometry.intermediate_size
        expected = {
            "mlp_permutation": (inter,),
            "mlp_scale": (inter,),
            "qk": (kv, hd, hd),
            "vo": (kv, hd, hd),
            "qk_norm_scale": (hd,),
        }
        for name, tensor in self.parts().items():
            if tuple(tensor.shape) != expected[name]:
                raise ValueError(f"block {layer}: {name} has shape {tuple(tensor.shape)}, the model needs {expected[name]}")
        if self.mlp_permutation is not None and not torch.equal(torch.sort(self.mlp_permutation).values, torch.arange(inter)):
            raise ValueError(f"block {layer}: mlp_permutation is not a permutation")


# A model's transform: decoder block index -> its transform (blocks not listed are untouched).
ModelTransform = Mapping[int, BlockTransform]


class LazyTransform(Mapping):
    """A model transform whose blocks are made in block order, in a background thread, one block ahead of use.

    Streaming a checkpoint through it overlaps making the blocks (a Hungarian assignment per block) with
    reading and writing, and a random sampler draws the same values as an eager loop over the blocks would.

    Args:
        num_layers: the decoder blocks.
        make_block: ``layer -> BlockTransform``; called once per block, for block 0, 1, 2, ... (one thread).
        desc: a progress-bar label (``None``: no bar).
    """

    def __init__(self, num_layers: int, make_block: Callable[[int], BlockTransform], desc: str | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.num_layers, self.make_block = num_layers, make_block
        self.futures: list = []
        self.maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-mergeguard-blocks")
        self.bar = None
        if desc is not None:
            from ..progress import progress_bar

            self.bar = progress_bar(total=num_layers, desc=desc)

    def _make(self, layer: int) -> BlockTransform:
        block = self.make_block(layer)
        if self.bar is not None:
            self.bar.update(1)
            if layer == self.num_layers - 1:
                self.bar.close()
        return block

    def __getitem__(self, layer: int) -> BlockTransform:
        if not 0 <= layer < self.num_layers:
            raise KeyError(layer)
        while len(self.futures) <= min(layer + 1, self.num_layers - 1):
            self.futures.append(self.maker.submit(self._make, len(self.futures)))
        block = self.futures[layer].result()
        if len(self.futures) == self.num_layers:
            self.maker.shutdown(wait=False)
        return block

    def __iter__(self):
        return iter(range(self.num_layers))

    def __len__(self) -> int:
        return self.num_layers


# --------------------------------------------------------------------------------------------------------
# Applying
# --------------------------------------------------------------------------------------------------------


def transform_tensor(name: str, tensor: torch.Tensor, transform: ModelTransform, geometry: Geometry) -> torch.Tensor:
    """``tensor`` (stored under ``name``) after ``transform``, in its own dtype; untouched tensors pass through."""
    layer, rest = split_layer_name(name)
    block = transform.get(layer) if layer is not None else None
    if block is None:
        return tensor
    if tensor.dim() != 2 or tensor.numel() <= _CHUNK_ELEMENTS:
        out = _transform_block_tensor(rest, tensor.double(), block, geometry)
        return tensor if out is None else out.to(tensor.dtype)
    # A 7B MLP matrix is 45M entries: in float64 chunks its temporaries stay small. Left maps (q, k, v, gate,
    # up) act on each column alone, right maps (o_proj, down_proj) on each row alone.
    dim = 0 if rest.rpartition(".")[0] in _RIGHT_ACTING else 1
    step = max(1, _CHUNK_ELEMENTS // tensor.shape[1 - dim])
    out = None
    for start in range(0, tensor.shape[dim], step):
        part = tensor.narrow(dim, start, min(step, tensor.shape[dim] - start))
        result = _transform_block_tensor(rest, part.double(), block, geometry)
        if result is None:
            return tensor
        if out is None:
            out = torch.empty_like(tensor)
        out.narrow(dim, start, part.shape[dim]).copy_(result)
    return out


def _transform_block_tensor(rest: str, w: torch.Tensor, t: BlockTransform, g: Geometry) -> torch.Tensor | None:
    kv, group, hd = g.num_kv_heads, g.group_size, g.head_dim
    proj, _, kind = rest.rpartition(".")
    is_bias = kind == "bias"
    if proj == "self_attn.q_proj" and t.qk is not None:
        # rows of query head n of group g: A_g @ rows
        heads = w.reshape(kv, group, hd, -1)
        return torch.einsum("gij,gnjk->gnik", t.qk.double(), heads).reshape(w.shape)
    if proj == "self_attn.k_proj" and t.qk is not None:
        return _left(torch.linalg.inv(t.qk.double()).transpose(-1, -2), w, kv, hd)
    if proj == "self_attn.v_proj" and t.vo is not None:
        return _left(t.vo.double(), w, kv, hd)
    if proj == "self_attn.o_proj" and t.vo is not None and not is_bias:
        # columns of query head n of group g: columns @ B_g^-1
        columns = w.reshape(w.shape[0], kv, group, hd)
        return torch.einsum("hgnj,gji->hgni", columns, torch.linalg.inv(t.vo.double())).reshape(w.shape)
    if proj in ("self_attn.q_norm", "self_attn.k_norm") and t.qk_norm_scale is not None:
        d = t.qk_norm_scale.double() if proj.endswith("q_norm") else 1.0 / t.qk_norm_scale.double()
        # Gemma-style norms store gain - 1.
        return (1.0 + w) * d - 1.0 if g.family.norm_offset_one else w * d
    if proj in ("mlp.gate_proj", "mlp.up_proj") and (t.mlp_permutation is not None or t.mlp_scale is not None):
        out = w if t.mlp_permutation is None else w[t.mlp_permutation]
        if proj == "mlp.up_proj" and t.mlp_scale is not None:
            s = t.mlp_scale.double()
            out = out * (s if is_bias else s[:, None])
        return out
    if proj == "mlp.down_proj" and not is_bias and (t.mlp_permutation is not None or t.mlp_scale is not None):
        out = w if t.mlp_permutation is None else w[:, t.mlp_permutation]
        return out if t.mlp_scale is None else out / t.mlp_scale.double()[None, :]
    return None


def _left(matrices: torch.Tensor, w: torch.Tensor, kv: int, hd: int) -> torch.Tensor:
    """Rows of KV head g (weight ``[kv*hd, in]`` or bias ``[kv*hd]``): ``matrices[g] @ rows``."""
    heads = w.reshape(kv, hd, -1)
    return torch.einsum("gij,gjk->gik", matrices, heads).reshape(w.shape)


def compose_inverse(stages: Sequence[ModelTransform]) -> list[dict[int, BlockTransform]]:
    """The inverses of ``stages`` in the order that undoes them (last stage first)."""
    return [{layer: block.inverse() for layer, block in stage.items()} for stage in reversed(stages)]


def transform_tensors(tensors: Iterable[tuple[str, torch.Tensor]], stages: Sequence[ModelTransform], geometry: Geometry):
    """Stream ``(name, tensor)`` through every stage in order."""
    for name, tensor in tensors:
        for stage in stages:
            tensor = transform_tensor(name, tensor, stage, geometry)
        yield name, tensor


# --------------------------------------------------------------------------------------------------------
# Sampling (each sampler returns exact members of the symmetry group)
# --------------------------------------------------------------------------------------------------------


def log_uniform(shape: Sequence[int], max_factor: float, generator: torch.Generator) -> torch.Tensor:
    """Factors in [1/max_factor, max_factor], uniform in log space (1 when max_factor is 1)."""
    span = math.log(max_factor)
    return torch.exp((2 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1) * span)


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def random_conditioned(n: int, condition: float, generator: torch.Generator) -> torch.Tensor:
    """A random invertible matrix U diag(s) V^T whose singular values lie in [1/sqrt(c), sqrt(c)] (condition <= c)."""
    singular = log_uniform((n,), math.sqrt(condition), generator)
    return random_orthogonal(n, generator) @ torch.diag(singular) @ random_orthogonal(n, generator).T


def pair_constant(values_per_pair: torch.Tensor, geometry: Geometry, tail: torch.Tensor | None = None) -> torch.Tensor:
    """A head_dim vector with ``values_per_pair[j]`` on dims j and j + rotary_dim/2 (``tail`` past rotary_dim)."""
    half, hd = geometry.rotary_dim // 2, geometry.head_dim
    out = torch.ones(hd, dtype=torch.float64)
    out[:half] = values_per_pair
    out[half : 2 * half] = values_per_pair
    if tail is not None and hd > 2 * half:
        out[2 * half :] = tail
    return out


def rope_commutant(geometry: Geometry, generator: torch.Generator, *, max_scale: float = 1.0, rotate: bool = True) -> torch.Tensor:
    """One random QK matrix that commutes with RoPE: per rotary pair a 2x2 rotation (uniform angle, if ``rotate``)
    scaled by a log-uniform factor in [1/max_scale, max_scale]; past rotary_dim a random block of the same kind
    (orthogonal when ``max_scale`` is 1, else conditioned by max_scale**2)."""
    half, hd = geometry.rotary_dim // 2, geometry.head_dim
    angle = 2 * math.pi * torch.rand(half, generator=generator, dtype=torch.float64) if rotate else torch.zeros(half, dtype=torch.float64)
    radius = log_uniform((half,), max_scale, generator)
    a = torch.zeros(hd, hd, dtype=torch.float64)
    j = torch.arange(half)
    a[j, j] = radius * torch.cos(angle)
    a[j, j + half] = -radius * torch.sin(angle)
    a[j + half, j] = radius * torch.sin(angle)
    a[j + half, j + half] = radius * torch.cos(angle)
    tail = hd - 2 * half
    if tail:
        a[2 * half :, 2 * half :] = (
            random_orthogonal(tail, generator) if max_scale == 1 else random_conditioned(tail, max_scale**2, generator)
        )
    return a


def qk_norm_signs(geometry: Geometry, generator: torch.Generator) -> torch.Tensor:
    """The only QK weight transform a QK-norm model admits: diag of pair-constant random signs."""
    half = geometry.rotary_dim // 2
    signs = torch.where(torch.rand(half, generator=generator) < 0.5, -1.0, 1.0).double()
    tail = torch.where(torch.rand(geometry.head_dim - 2 * half, generator=generator) < 0.5, -1.0, 1.0).double()
    return torch.diag(pair_constant(signs, geometry, tail))


def random_permutation(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator)


def stack_per_kv_head(make, geometry: Geometry) -> torch.Tensor:
    """``[num_kv_heads, head_dim, head_dim]`` from a sampler called once per KV head."""
    return torch.stack([make() for _ in range(geometry.num_kv_heads)])


def max_condition(transform: ModelTransform) -> float:
    """The largest condition number of any QK or VO matrix (how much a bf16 rounding error can grow)."""
    worst = 1.0
    for block in transform.values():
        for matrices in (block.qk, block.vo):
            if matrices is not None:
                worst = max(worst, float(torch.linalg.cond(matrices.double()).max()))
    return worst
