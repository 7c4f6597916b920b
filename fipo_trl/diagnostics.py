"""Per-micro-batch FIPO metrics (docs/fipo.md §5.1) as local partial results that a trainer reduces over processes."""

from typing import NamedTuple

import torch

from .core import FIPOWeights


class FIPODiagnostics(NamedTuple):
    """Local partial statistics; the trainer reduces each family across processes as its name says."""

    sums: dict[str, torch.Tensor]  # name -> (sum, count): global mean = Σ sums / Σ counts
    minima: dict[str, torch.Tensor]  # name -> local min (+inf if empty): global min
    maxima: dict[str, torch.Tensor]  # name -> local max (−inf if empty): global max
    quantiles: dict[str, torch.Tensor]  # name -> local quantile (NaN if empty): mean over processes, as verl does


@torch.no_grad()
def fipo_diagnostics(
    w: FIPOWeights,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    weight_bounds: tuple[float | None, float],
    dual_clip_ratio: float,
) -> FIPODiagnostics:
    r"""
    The official FIPO metrics of one micro-batch (docs/fipo.md §5.1), plus the off-policy measure mean |Δ|.

    Args:
        w ([`FIPOWeights`]): output of [`fipo_weights`] for this micro-batch.
        advantages (`torch.Tensor` of shape `(B,)` or `(B, T)`): the advantages A.
        mask (`torch.Tensor` of shape `(B, T)`): valid completion tokens.
        weight_bounds (`tuple`): `(lower or None, upper)` clamp of the weights, from [`weight_bounds`].
        dual_clip_ratio (`float`): the dual-clip constant c.
    """
    mask = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    negative, positive = (advantages < 0) & mask, (advantages > 0) & mask
    ratio = w.log_ratio.exp()
    n_tokens = mask.sum().float()
    lower, upper = weight_bounds

    def token_mean(x):
        return torch.stack([(x.float() * mask).sum(), n_tokens])

    has_tokens = mask.any(-1)
    sums = {
        "future_kl_mean": token_mean(w.future_kl),
        "weight_mean": token_mean(w.weights),
        "raw_weight_mean": token_mean(w.raw_weights),
        "weight_clip_upper": token_mean(w.weights >= upper - 1e-7),
        "weight_clip_lower": token_mean(w.weights <= lower + 1e-7) if lower is not None else token_mean(mask & False),
        "safety_capped_frac": token_mean(w.safety_capped),
        "dual_clip_frac": token_mean(w.dual_clipped),
        "policy_kl": token_mean(-w.log_ratio),
        "abs_log_ratio_mean": token_mean(w.log_ratio.abs()),
        "neg_ratio_2_3": token_mean(negative & (ratio >= 2) & (ratio < 3)),
        "neg_ratio_3_4": token_mean(negative & (ratio >= 3) & (ratio < 4)),
        "neg_ratio_4_c": token_mean(negative & (ratio >= 4) & (ratio < dual_clip_ratio)),
        "pos_mini_frac": token_mean(positive & (ratio < 1e-3)),
        "dropped_frac": torch.stack([(has_tokens & ~w.keep.squeeze(-1)).sum().float(), has_tokens.sum().float()]),
    }
    return FIPODiagnostics(sums, *_extremes(w.weights[mask], w.raw_weights[mask], ratio[negative], ratio[positive]))


def _extremes(weights, raw_weights, neg_is, pos_is):
    """Minima, maxima and quantiles of the valid tokens' weights and of the ratios of A<0 / A>0 tokens."""
    minima = {"weight_min": _min(weights), "raw_weight_min": _min(raw_weights), "pos_is_min": _min(pos_is)}
    maxima = {
        "weight_max": _max(weights),
        "raw_weight_max": _max(raw_weights),
        "neg_is_max": _max(neg_is),
        "pos_is_max": _max(pos_is),
    }
    neg_q = _quantiles(neg_is, (0.75, 0.995, 0.999))
    pos_q = _quantiles(pos_is, (0.25, 0.5, 0.75, 0.995, 0.999))
    quantiles = dict(zip(("neg_is_p75", "neg_is_p995", "neg_is_p999"), neg_q, strict=True))
    pos_names = ("pos_is_p25", "pos_is_median", "pos_is_p75", "pos_is_p995", "pos_is_p999")
    quantiles.update(zip(pos_names, pos_q, strict=True))
    return minima, maxima, quantiles


def _min(x):
    return x.min() if x.numel() else x.new_tensor(float("inf"))


def _max(x):
    return x.max() if x.numel() else x.new_tensor(float("-inf"))


def _quantiles(x, qs):
    """Linear-interpolation quantiles like `torch.quantile`, without its 16M-element limit (20k-token batches)."""
    if x.numel() == 0:
        return [x.new_tensor(float("nan")) for _ in qs]
    ordered = x.float().sort().values
    positions = torch.tensor(qs, device=x.device) * (ordered.numel() - 1)
    below = positions.floor().long()
    above = positions.ceil().long()
    values = ordered[below] + (ordered[above] - ordered[below]) * (positions - below)
    return list(values.unbind())
