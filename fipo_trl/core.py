"""The FIPO maths as pure torch functions: no TRL, no trainer, usable from any framework.

Everything follows the official `compute_policy_loss_future_kl` (qwenpilot/FIPO @ ee25452), described in
`docs/fipo.md` §2; where the paper and the code differ, the code wins (§2.14).
"""

import functools
import math
from typing import NamedTuple

import torch


LOG_RATIO_CLAMP = 20.0  # docs/fipo.md §2.1: the official code clamps log π_θ − log π_old to ±20 (not in the paper)
UNCLIPPED_WEIGHT_MAX = 10.0  # docs/fipo.md §2.4: with clip_range == 0 the official code still caps f at 10
SAFETY_WEIGHT_RANGE = (0.8, 1.0)  # docs/fipo.md §2.5: unsafe tokens get f clamped to [0.8, 1.0]
_BLOCK = 64  # tokens per block of the blocked scan: any size is exact; 64 balances matmul work and recursion depth


def discounted_future_sum(x: torch.Tensor, gamma: float) -> torch.Tensor:
    r"""
    Discounted sum of the future along the last dimension: `F_t = Σ_{k≥t} γ^(k−t) x_k` (paper Eq. 6).

    Blocked scan, O(T) time and memory: the future sums at the block starts (every 64 tokens) obey the same
    recurrence with discount `γ^64` and are solved first, recursively, on T/64 values; then one matmul of the blocks
    with a fixed (65, 64) decay matrix gives every in-block sum plus the carry from the next block. No `γ^(−t)`
    rescaling appears anywhere, so nothing overflows for any T.

    Args:
        x (`torch.Tensor` of shape `(..., T)`):
            Values to sum (any floating dtype). Positions that must not contribute should already be 0; they still
            count toward the distance `k − t` (docs/fipo.md §2.3).
        gamma (`float`):
            Discount in `[0, 1]`. FIPO uses `γ = 2^(−1/decay_rate)`.

    Returns:
        `torch.Tensor` of the same shape and dtype as `x`, accumulated in float32 (float64 if `x` is float64).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if x.shape[-1] == 0:
        return x.clone()
    work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    flat = x.reshape(-1, x.shape[-1]).to(work_dtype)
    return _future_sum_2d(flat, gamma).reshape(x.shape).to(x.dtype)


def _future_sum_2d(x: torch.Tensor, gamma: float) -> torch.Tensor:
    rows, length = x.shape
    if length <= 1:
        return x.clone()
    block = min(_BLOCK, length)
    n_blocks, full = -(-length // block), length // block
    decay, powers = _decay_matrices(gamma, block, x.dtype, x.device)
    # one buffer holds each block's values plus, in a last column, the full future sum at the next block's start
    buf = x.new_empty(rows, n_blocks, block + 1)
    buf[:, :full, :block] = x[:, : full * block].view(rows, full, block)
    if full < n_blocks:
        buf[:, full].zero_()
        buf[:, full, : length - full * block] = x[:, full * block :]
    buf[:, -1, block] = 0
    if n_blocks > 1:
        # the block starts obey the same recurrence with discount γ^block: solve it on T/block values first
        buf[:, :-1, block] = _future_sum_2d(buf[:, 1:, :block] @ powers, gamma**block)
    return (buf @ decay).view(rows, -1)[:, :length]


@functools.lru_cache(maxsize=64)
def _decay_matrices(gamma: float, block: int, dtype: torch.dtype, device: torch.device):
    """(block+1, block) matrix: rows k < block hold γ^(k−t) for k ≥ t, the last row γ^(block−t); and γ^k."""
    steps = torch.arange(block, dtype=torch.float64)
    distance = steps[:, None] - steps[None, :]
    decay = torch.where(distance >= 0, gamma ** distance.clamp(min=0), 0.0)
    decay = torch.cat([decay, (gamma ** (block - steps))[None, :]])
    return decay.to(dtype=dtype, device=device), (gamma**steps).to(dtype=dtype, device=device)


def weight_bounds(clip_range: float, clip_high_only: bool) -> tuple[float | None, float]:
    """The `(lower, upper)` clamp of the influence weight in the three official modes (docs/fipo.md §2.4)."""
    if clip_range == 0:
        return None, UNCLIPPED_WEIGHT_MAX
    return (1.0 if clip_high_only else 1.0 - clip_range), 1.0 + clip_range


class FIPOWeights(NamedTuple):
    """Per-token quantities of one FIPO weighting pass; every tensor is `(B, T)` except `keep`, which is `(B, 1)`."""

    log_ratio: torch.Tensor  # s_t = clamp(log π_θ − log π_old, ±20), float32
    future_kl: torch.Tensor  # FutureKL_t (docs/fipo.md §2.3)
    raw_weights: torch.Tensor  # exp(FutureKL_t), before any clip
    weights: torch.Tensor  # f_t after the clip mode and the safety cap
    safety_capped: torch.Tensor  # bool: valid tokens with A < 0 and ratio > safety_threshold
    dual_clipped: torch.Tensor  # bool: valid tokens with A < 0 and ratio > dual_clip_ratio
    keep: torch.Tensor  # bool (B, 1): responses that stay in the loss (fewer than 2 dual-clipped tokens)


@torch.no_grad()
def fipo_weights(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    decay_rate: float = 32.0,
    clip_range: float = 0.2,
    clip_high_only: bool = True,
    safety_threshold: float = 10.0,
    dual_clip_ratio: float = 10.0,
) -> FIPOWeights:
    r"""
    The FIPO influence weights f_t and the masks derived with them (docs/fipo.md §2.1–§2.5, §2.7). No gradient.

    Args:
        log_ratio (`torch.Tensor` of shape `(B, T)`):
            `log π_θ(y_t) − log π_old(y_t)`; clamped to ±20 here.
        advantages (`torch.Tensor` of shape `(B,)`, `(B, 1)` or `(B, T)`):
            Advantages A; only their sign is used.
        mask (`torch.Tensor` of shape `(B, T)`):
            1 (or True) on valid completion tokens, 0 on padding and on tokens excluded from the loss.
        decay_rate (`float`): half-life τ in tokens; `γ = 2^(−1/τ)`.
        clip_range (`float`): ε_f; `0` selects the official "unclipped" mode (f capped at 10 only).
        clip_high_only (`bool`): `[1, 1+ε_f]` if True, `[1−ε_f, 1+ε_f]` otherwise.
        safety_threshold (`float`): ratio above which negative-advantage tokens get f clamped to [0.8, 1].
        dual_clip_ratio (`float`): the dual-clip constant c; tokens with ratio > c are left out of the future sum.

    Returns:
        [`FIPOWeights`].
    """
    mask = mask.bool()
    log_ratio = log_ratio.detach().float().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    advantages = advantages.detach()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    negative = (advantages < 0).expand_as(log_ratio)
    ratio = log_ratio.exp()

    participates = mask & (log_ratio <= math.log(dual_clip_ratio))  # §2.2, regardless of the advantage sign
    future_kl = discounted_future_sum(log_ratio * participates, 2.0 ** (-1.0 / decay_rate))  # §2.3, Eq. 6
    raw_weights = future_kl.exp()
    weights = raw_weights.clamp(*weight_bounds(clip_range, clip_high_only))  # §2.4
    unsafe = negative & (ratio > safety_threshold)  # §2.5, applied after the clip
    weights = torch.where(unsafe, weights.clamp(*SAFETY_WEIGHT_RANGE), weights)

    dual_clipped = negative & (ratio > dual_clip_ratio) & mask  # §2.7: the dual clip of §2.6 is active here
    keep = dual_clipped.sum(-1, keepdim=True) <= 1
    return FIPOWeights(log_ratio, future_kl, raw_weights, weights, unsafe & mask, dual_clipped, keep)


@torch.no_grad()
def fipo_advantages(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    decay_rate: float = 32.0,
    clip_range: float = 0.2,
    clip_high_only: bool = True,
    safety_threshold: float = 10.0,
    dual_clip_ratio: float = 10.0,
) -> torch.Tensor:
    r"""
    The future-aware advantage `Ã_t = A·f_t` of FIPO (docs/fipo.md §2.1–§2.5), ready for a DAPO clipped surrogate.

    Defaults are the official Qwen2.5-32B script (`recipe/fipo/run_fipo_qwen2.5_32b.sh`, docs/fipo.md §3.1).

    Args:
        per_token_logps (`torch.Tensor` of shape `(B, T)`): log π_θ of the completion tokens (detached here).
        old_per_token_logps (`torch.Tensor` of shape `(B, T)`): log π_old of the same tokens.
        advantages (`torch.Tensor` of shape `(B,)` or `(B, T)`): advantages A.
        mask (`torch.Tensor` of shape `(B, T)`): 0/1 or bool, valid completion tokens.
        decay_rate, clip_range, clip_high_only, safety_threshold, dual_clip_ratio: see [`fipo_weights`].

    Returns:
        `torch.Tensor` of shape `(B, T)` in float32: `A·f`, zero on masked tokens and on every token of a response
        dropped by the sequence filter (≥ 2 tokens with A < 0 and ratio > `dual_clip_ratio`, docs/fipo.md §2.7).
    """
    w = fipo_weights(
        per_token_logps.float() - old_per_token_logps.float(),  # subtract in fp32: bf16 log-probs round Δ to ~1e-2
        advantages,
        mask,
        decay_rate=decay_rate,
        clip_range=clip_range,
        clip_high_only=clip_high_only,
        safety_threshold=safety_threshold,
        dual_clip_ratio=dual_clip_ratio,
    )
    advantages = advantages.detach().float()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    return advantages * w.weights * (mask.bool() & w.keep)
