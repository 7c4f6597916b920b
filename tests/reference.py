"""Plain float64 references of the FIPO rules (docs/fipo.md §2), written for clarity, not speed."""

import math

import torch


def reference_future_sum(x, gamma):
    """F_t = x_t + γ F_{t+1}, one token at a time, in float64."""
    x = x.double()
    out = torch.zeros_like(x)
    carry = torch.zeros_like(x[..., 0])
    for t in reversed(range(x.shape[-1])):
        carry = x[..., t] + gamma * carry
        out[..., t] = carry
    return out


def reference_fipo(logp, old, adv, mask, decay_rate, clip_range, clip_high_only, safety, c):
    """docs/fipo.md §2.1–§2.7 written out plainly in float64: returns (f, keep mask over tokens)."""
    s = (logp.double() - old.double()).clamp(-20, 20)
    ratio = s.exp()
    adv = adv.double().reshape(adv.shape[0], -1).expand_as(s)
    mask = mask.bool()
    d = torch.where(mask & (s <= math.log(c)), s, torch.zeros_like(s))
    future_kl = reference_future_sum(d, 2 ** (-1 / decay_rate))
    f = future_kl.exp()
    if clip_range != 0:
        f = f.clamp(1.0 if clip_high_only else 1 - clip_range, 1 + clip_range)
    else:
        f = f.clamp(max=10.0)
    unsafe = (adv < 0) & (ratio > safety)
    f = torch.where(unsafe, f.clamp(0.8, 1.0), f)
    dual = (adv < 0) & (ratio > c) & mask
    keep = mask & (dual.sum(-1, keepdim=True) <= 1)
    return f, keep, future_kl


def random_batch(batch, length, seed, spikes=True):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 5
    log_ratio = torch.randn(batch, length, generator=g, dtype=torch.float64) * 0.3
    if spikes:  # a few tokens past the dual clip (ratio > 10), past the ±20 clamp, and collapsed
        spike = torch.rand(batch, length, generator=g)
        log_ratio[spike < 0.02] = math.log(15.0)
        log_ratio[(spike > 0.02) & (spike < 0.03)] = 25.0
        log_ratio[(spike > 0.03) & (spike < 0.04)] = -30.0
    mask = torch.rand(batch, length, generator=g) > 0.15  # holes inside the completion
    mask[:, (length * 3) // 4 :] = False  # right padding
    adv = torch.randn(batch, generator=g, dtype=torch.float64)
    return old + log_ratio, old, adv, mask
