"""Building blocks of the PaDT trunk: RMSNorm, multi-head attention over SDPA, 2-D vision rotary.

Module and parameter names follow the reference decoder (reference §5.2, §10.2: ``q_proj``,
``k_proj``, ``v_proj``, ``proj``, ``mlp.0``/``mlp.2``) so a checkpoint adapter only renames prefixes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "Attention",
    "RMSNorm",
    "apply_rotary",
    "attend",
    "attend_projected",
    "compiled",
    "few_keys",
    "init_weights",
    "merge_heads",
    "pair_permutation",
    "rotary_cis",
    "rotary_cos_sin",
    "rotate_pairs",
    "rotate_pairs_",
    "split_heads",
    "vision_rotary",
]


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x²) + eps)``, normalised in float32 (Qwen2 convention)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    """The four projections of one attention; the call sites decide where positions and norms go."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)


class MLP(nn.Sequential):
    """``Linear → GELU → Linear`` (indices 0 and 2, as in the reference state dict)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[..., L, H*dh]`` → ``[..., H, L, dh]``."""
    *lead, length, dim = x.shape
    return x.view(*lead, length, num_heads, dim // num_heads).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[..., H, L, dh]`` → ``[..., L, H*dh]``."""
    *lead, heads, length, dh = x.shape
    return x.transpose(-3, -2).reshape(*lead, length, heads * dh)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA over ``[n, H, L, dh]`` tensors; ``key_mask`` ``[n, Lk]`` (True = attend) or ``None`` (all keys).

    Every query row must see at least one key (head query tokens and real image rows always exist).
    """
    if few_keys(q, k):
        return torch.matmul(_probs(q, k, key_mask, keys_major=True).transpose(-1, -2), v)
    if q.device.type == "cpu" and torch.compiler.is_compiling():
        # Compiled CPU code: scores, softmax and the products as plain ops, which inductor fuses; the
        # CPU flash kernel's backward took 0.7 ms per call for 8 queries over 256 keys (~0.1 ms of products).
        return torch.matmul(_probs(q, k, key_mask, keys_major=False), v)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# The image→query step has thousands of queries (memory rows) and a handful of keys (an object's
# query tokens). CPU SDPA kernels block over keys and run a softmax along a row of ~10 values: fwd +
# bwd took twice as long as the same product laid out keys-major, scores ``[.., Lk, Lq]`` with the
# softmax across the short axis (vectorised over the long one). GPUs keep SDPA.
FEW_KEYS = 32


def few_keys(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether ``attend`` takes the keys-major path for these shapes."""
    return q.device.type == "cpu" and k.shape[-2] <= FEW_KEYS and k.shape[-2] * 4 <= q.shape[-2]


def _probs(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None, *, keys_major: bool) -> torch.Tensor:
    """Attention probabilities in ``q``'s dtype (softmax in float32): ``[n, H, Lq, Lk]``, or keys-major
    ``[n, H, Lk, Lq]`` with the softmax across the short key axis."""
    scale = q.shape[-1] ** -0.5
    if keys_major:
        scores, mask, dim = torch.matmul(k * scale, q.transpose(-1, -2)), (slice(None), None, slice(None), None), -2
    else:
        scores, mask, dim = torch.matmul(q * scale, k.transpose(-1, -2)), (slice(None), None, None, slice(None)), -1
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[mask], float("-inf"))
    return scores.softmax(dim, dtype=torch.float32).to(q.dtype)


def attend_projected(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    out: nn.Linear,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``residual + out(merge_heads(attend(q, k, v, key_mask)))``, ``[n, Lq, d_out]``.

    With few keys the output projection goes onto the values first: ``Σ_h P_hᵀ (V_h W_hᵀ)`` is one
    batched product over ``H·Lk`` terms per query, instead of the ``[n, H, Lq, dh]`` attention output,
    its head merge and a projection of all ``Lq`` rows. Each head's probabilities sum to one over the
    keys, so ``bias / H`` added to every projected value adds exactly the bias.
    """
    if not few_keys(q, k):
        delta = out(merge_heads(attend(q, k, v, key_mask)))
        return delta if residual is None else residual + delta
    n, heads, length, dh = q.shape
    probs = _probs(q, k, key_mask, keys_major=True)  # [n, H, Lk, Lq]
    weight = out.weight.view(-1, heads, dh).permute(1, 2, 0)  # [H, dh, d_out]
    values = torch.matmul(v, weight)  # [n, H, Lk, d_out]
    if out.bias is not None:
        values = values + out.bias / heads
    probs_t = probs.reshape(n, -1, length).transpose(1, 2)  # [n, Lq, H*Lk], a view
    values = values.reshape(n, -1, values.shape[-1])
    if residual is None:
        return torch.bmm(probs_t, values)
    return torch.baddbmm(residual, probs_t, values)


# ---------------------------------------------------------------------------------------------------
# 2-D rotary positions of the image memory, as Qwen2.5-VL's vision tower builds them: half of the
# rotary frequencies encode the row, half the column, in fine-patch units. Computed from grid
# coordinates here, so the trunk works with any backbone (reference §0, §5.3).
# ---------------------------------------------------------------------------------------------------


def vision_rotary(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``[..., N, head_dim]``, for ``[..., N, 2]`` (row, col) positions.

    ``dim = head_dim / 2`` frequencies ``1 / theta^(2i / dim)`` (i < dim/2) are applied to the row
    and to the column; the concatenated ``[rows | cols]`` angles are duplicated to the full head
    dimension (rotate-half convention). Head dim 80: 20 row + 20 column frequencies.
    """
    if head_dim % 4:
        raise ValueError(f"2-D rotary positions need a head dim divisible by 4, got {head_dim}")
    dim = head_dim // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
    angles = (positions.float()[..., None] * inv_freq).flatten(-2)  # [..., N, dim]: row freqs, then col freqs
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[..., N, head_dim]`` (rotate-half convention), in float32 like the reference."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


# The trunk applies the same rotation in a cheaper form. Rotate-half rotates channel pairs
# (c, c + dh/2) of each head; an attention score only sums q·k over channels, so relabelling the
# channels of *both* q and k (the rows of their projection weights) leaves it unchanged. With each
# pair made adjacent, the rotation is one in-place complex multiply of the projected tensor instead
# of five passes over it (the per-object memory projections are the largest tensors of the trunk).


def pair_permutation(num_heads: int, head_dim: int, device: torch.device | None = None) -> torch.Tensor:
    """``[H*dh]`` long: new channel order with rotate-half pair ``(c, c + dh/2)`` of each head adjacent."""
    half = head_dim // 2
    within = torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1).flatten()
    return (torch.arange(num_heads)[:, None] * head_dim + within).flatten().to(device)


def rotary_cis(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """``[..., N, head_dim/2]`` complex ``exp(i·angle)``: the angles of ``vision_rotary`` for each channel pair."""
    cos, sin = vision_rotary(positions, head_dim, theta)
    half = head_dim // 2
    return torch.complex(cos[..., :half], sin[..., :half])


def rotate_pairs_(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[..., N, H*dh]`` (pair-permuted channels) in place by ``cis`` ``[..., N, 1, dh/2]``.

    Equals ``apply_rotary`` on the un-permuted channels; computed in float32 whatever ``x``'s dtype.
    ``cis`` may also be the same rotation as real ``(cos, sin)`` pairs, ``[..., N, 1, dh/2, 2]``
    (``rotary_cos_sin``): the form ``torch.compile`` generates code for (it has no complex kernels).
    """
    if x.dtype == torch.float32 and cis.is_complex():
        torch.view_as_complex(x.view(_pairs_shape(x, cis))).mul_(cis)
        return x
    return x.copy_(_rotated(x, cis))


def rotate_pairs(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """``rotate_pairs_`` for tensors autograd records: a new tensor. Rotating a view in place makes the
    backward copy the whole projected tensor again (``CopySlices``), for every rotation of a step."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _rotated(x, cis)
    return rotate_pairs_(x, cis)


def rotary_cos_sin(cis: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` real ``(cos, sin)`` of a complex rotation ``cis``: a tensor of its own, not a view of
    ``cis``'s storage (a module caching both would not pickle)."""
    return torch.view_as_real(cis).clone()


def _pairs_shape(x: torch.Tensor, cis: torch.Tensor) -> tuple[int, ...]:
    half = cis.shape[-1] if cis.is_complex() else cis.shape[-2]
    return (*x.shape[:-1], x.shape[-1] // (2 * half), half, 2)


def _rotated(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    pairs = x.float().reshape(_pairs_shape(x, cis))
    if cis.is_complex():
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * cis)
    else:
        (a, b), (cos, sin) = pairs.unbind(-1), cis.unbind(-1)
        rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return rotated.view(x.shape).to(x.dtype)


def compiled(module: nn.Module, method: str, *per_object: torch.Tensor | None) -> Callable:
    """``module.<method>`` under ``torch.compile``: the class's function is compiled once per process and
    called with ``module`` bound, so nothing is stored on the module (it pickles and copies as before).

    ``per_object``: the call's tensors whose first dim is the object count. It changes from batch to
    batch, so it is marked dynamic up front: one compile serves every count instead of a recompile at
    the first change and another at a count outside the range inferred then.
    """
    for tensor in per_object:
        if tensor is not None:
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
    key = (type(module), method)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(getattr(type(module), method))
    return functools.partial(_COMPILED[key], module)


_COMPILED: dict[tuple[type, str], Callable] = {}


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Reference initialisation (Qwen ``_init_weights``): linears/embeddings N(0, std), zero biases; norms at 1."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
