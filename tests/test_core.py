"""The pure FIPO maths against hand vectors (docs/fipo.md §2.12) and plain float64 references (docs/fipo.md §2)."""

import math

import pytest
import torch
from reference import random_batch, reference_fipo, reference_future_sum

from fipo_trl import discounted_future_sum, fipo_advantages, fipo_weights


# ------------------------------------------------------------------------------------- docs/fipo.md §2.12 hand vectors
def test_future_sum_hand_vector():
    # γ = 0.5, D = [0.1, −0.2, 0.4] → FutureKL = [0.1, 0.0, 0.4]
    out = discounted_future_sum(torch.tensor([[0.1, -0.2, 0.4]]), 0.5)
    torch.testing.assert_close(out, torch.tensor([[0.1, 0.0, 0.4]]))


def test_participation_filter_hand_vector():
    # token 1 has ratio 12 > c = 10, so it leaves the sum: FutureKL = [0.2, 0.2, 0.4]
    w = fipo_weights(torch.tensor([[0.1, math.log(12.0), 0.4]]), torch.tensor([1.0]), torch.ones(1, 3), decay_rate=1.0)
    torch.testing.assert_close(w.future_kl, torch.tensor([[0.2, 0.2, 0.4]]))


def test_participation_filter_ignores_advantage_sign():
    # docs/fipo.md §2.2 (code and paper v2): the filter applies to positive-advantage tokens too
    for adv in (1.0, -1.0):
        w = fipo_weights(torch.tensor([[0.1, math.log(12.0), 0.4]]), torch.tensor([adv]), torch.ones(1, 3))
        assert w.future_kl[0, 1] == pytest.approx(0.4 * 2 ** (-1 / 32))


def test_clip_high_only_hand_vector():
    # one-token rows: FutureKL = s. exp(0.2)=1.22 → 1.2, exp(0.4) → 1.2, 0 → 1, −0.3 → 1
    w = fipo_weights(torch.tensor([[0.2], [0.4], [0.0], [-0.3]]), torch.ones(4), torch.ones(4, 1))
    torch.testing.assert_close(w.weights, torch.tensor([[1.2], [1.2], [1.0], [1.0]]))


def test_symmetric_clip_hand_vector():
    # symmetric [0.8, 1.2]: FutureKL −0.3 → exp = 0.741 → 0.8; 0.1 → exp(0.1) unclipped
    w = fipo_weights(torch.tensor([[-0.3], [0.1]]), torch.ones(2), torch.ones(2, 1), clip_high_only=False)
    torch.testing.assert_close(w.weights, torch.tensor([[0.8], [math.exp(0.1)]]))


def test_unclipped_mode_caps_at_ten_only():
    # clip_range = 0: f = min(exp(FutureKL), 10) with no lower bound
    w = fipo_weights(torch.tensor([[2.0], [-3.0]]), torch.ones(2), torch.ones(2, 1), clip_range=0.0)
    torch.testing.assert_close(w.weights, torch.tensor([[math.exp(2.0)], [math.exp(-3.0)]]))
    w = fipo_weights(torch.tensor([[2.5]]), torch.ones(1), torch.ones(1, 1), clip_range=0.0, dual_clip_ratio=100.0)
    assert w.weights.item() == pytest.approx(10.0)


def test_safety_cap_clamps_to_point_eight_one():
    # A < 0 and ratio 5 > S = 3: f is clamped into [0.8, 1] after the clip (docs/fipo.md §2.5)
    log_ratio = torch.tensor([[math.log(5.0), -8.0], [math.log(5.0), 0.0]])  # γ = 0.5
    kwargs = {"decay_rate": 1.0, "clip_range": 0.0, "safety_threshold": 3.0}
    neg = fipo_weights(log_ratio, torch.tensor([-1.0, -1.0]), torch.ones(2, 2), **kwargs)
    assert neg.weights[0, 0].item() == pytest.approx(0.8)  # raw exp(log 5 − 4) = 0.09 raised to 0.8
    assert neg.weights[1, 0].item() == pytest.approx(1.0)  # raw 5 capped to 1
    assert neg.safety_capped[:, 0].all() and not neg.safety_capped[:, 1].any()
    pos = fipo_weights(log_ratio, torch.tensor([1.0, 1.0]), torch.ones(2, 2), **kwargs)
    assert pos.weights[1, 0].item() == pytest.approx(5.0)  # positive advantage: no cap
    assert not pos.safety_capped.any()


def test_sequence_drop_at_exactly_two_dual_clipped_tokens():
    # A < 0, ratios [12, 1, 11] (c = 10): two dual-clipped tokens → dropped; [12, 1, 1] → kept
    log_ratio = torch.tensor([[12.0, 1.0, 11.0], [12.0, 1.0, 1.0]]).log()
    w = fipo_weights(log_ratio, torch.tensor([-1.0, -1.0]), torch.ones(2, 3))
    assert w.keep.squeeze(-1).tolist() == [False, True]
    assert fipo_weights(log_ratio, torch.tensor([1.0, 1.0]), torch.ones(2, 3)).keep.all()  # A > 0: never dropped
    adv = fipo_advantages(log_ratio, torch.zeros(2, 3), torch.tensor([-1.0, -1.0]), torch.ones(2, 3))
    assert (adv[0] == 0).all() and (adv[1] != 0).all()


def test_sequence_drop_counts_valid_tokens_only():
    # a dual-clipped ratio on a padding position does not count
    log_ratio = torch.tensor([[12.0, 1.0, 11.0]]).log()
    w = fipo_weights(log_ratio, torch.tensor([-1.0]), torch.tensor([[1, 1, 0]]))
    assert w.keep.all()


def test_log_ratio_clamped_to_twenty():
    # docs/fipo.md §2.1: s = clamp(Δ, −20, 20); a collapsed token contributes −20, not −30
    w = fipo_weights(torch.tensor([[-30.0]]), torch.ones(1), torch.ones(1, 1), clip_range=0.0)
    assert w.future_kl.item() == pytest.approx(-20.0)
    assert w.log_ratio.item() == -20.0


def test_mask_holes_still_count_toward_distance():
    # docs/fipo.md §2.3: a masked position contributes 0 but the discount still runs over it
    w = fipo_weights(torch.tensor([[0.0, 5.0, 1.0]]), torch.ones(1), torch.tensor([[1, 0, 1]]), decay_rate=1.0)
    assert w.future_kl[0, 0].item() == pytest.approx(0.25)


def test_on_policy_weights_are_exactly_one():
    # Δ = 0 → FutureKL = 0 → f = 1 in every mode, and Ã = A on valid tokens
    logp, _, adv, mask = random_batch(3, 50, seed=0)
    for clip_range, high_only in ((0.2, True), (0.2, False), (0.0, True)):
        w = fipo_weights(torch.zeros(3, 50), adv, mask, clip_range=clip_range, clip_high_only=high_only)
        assert (w.weights == 1).all()
    out = fipo_advantages(logp, logp, adv, mask)
    torch.testing.assert_close(out, (adv[:, None] * mask).float())


# ------------------------------------------------------------------------------------------------ future sum, exact
@pytest.mark.parametrize("length", [1, 2, 3, 127, 128, 129, 1000, 4097])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2 ** (-1 / 32), 1.0])
def test_future_sum_matches_float64_reference(length, gamma):
    generator = torch.Generator().manual_seed(length)
    x = torch.randn(3, length, generator=generator)
    x[torch.rand(3, length, generator=generator) < 0.2] = 0.0
    ref = reference_future_sum(x, gamma)
    out = discounted_future_sum(x, gamma)
    assert out.dtype == torch.float32 and out.shape == x.shape
    scale = reference_future_sum(x.abs(), gamma).max().clamp(min=1.0)
    assert ((out.double() - ref).abs().max() / scale) < 1e-5


def test_future_sum_matches_definition_by_dense_sum():
    # the recurrence used as reference agrees with the definition Σ_{k≥t} γ^(k−t) x_k
    x = torch.randn(2, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    k, t = torch.arange(300.0, dtype=torch.float64)[None, :], torch.arange(300.0, dtype=torch.float64)[:, None]
    dense = torch.where(k >= t, 0.9 ** (k - t), 0.0)
    torch.testing.assert_close(discounted_future_sum(x, 0.9), x @ dense.T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(reference_future_sum(x, 0.9), x @ dense.T, rtol=1e-10, atol=1e-10)


def test_future_sum_long_sequence_no_overflow():
    # T = 65,536 at τ = 32: rescaling by γ^(−t) would overflow fp32 past ~4k tokens; this must stay exact
    gamma = 2 ** (-1 / 32)
    x = torch.randn(2, 65536, generator=torch.Generator().manual_seed(1))
    ref = reference_future_sum(x, gamma)
    out = discounted_future_sum(x, gamma)
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < 1e-5
    ones = discounted_future_sum(torch.ones(1, 65536), gamma)
    assert ones[0, 0].item() == pytest.approx(1 / (1 - gamma), rel=1e-5)


def test_future_sum_bf16_input_accumulates_in_fp32():
    # bf16 in, bf16 out, but no bf16 accumulation error: equal to the fp32 result rounded once
    x = torch.randn(2, 5000, generator=torch.Generator().manual_seed(0)).bfloat16()
    out = discounted_future_sum(x, 2 ** (-1 / 32))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference_future_sum(x.float(), 2 ** (-1 / 32)).bfloat16(), rtol=8e-3, atol=1e-2)


def test_future_sum_leading_dims_and_float64():
    x = torch.randn(2, 3, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = discounted_future_sum(x, 0.97)
    assert out.dtype == torch.float64 and out.shape == x.shape
    torch.testing.assert_close(out, reference_future_sum(x, 0.97), rtol=1e-12, atol=1e-12)


def test_future_sum_rejects_gamma_outside_unit_interval():
    with pytest.raises(ValueError, match="gamma"):
        discounted_future_sum(torch.ones(1, 4), 1.5)


# ------------------------------------------------------------------------------------------- fipo_advantages, exact
@pytest.mark.parametrize("length", [1, 17, 300, 5000])
@pytest.mark.parametrize(
    "mode", [(0.2, True, 10.0), (0.2, False, 3.0), (0.0, True, 4.0)], ids=["32B", "7B", "unclipped"]
)
def test_fipo_advantages_match_float64_reference(length, mode):
    clip_range, high_only, safety = mode
    logp, old, adv, mask = random_batch(4, length, seed=length)
    kwargs = {"clip_range": clip_range, "clip_high_only": high_only, "safety_threshold": safety}
    out = fipo_advantages(logp.float(), old.float(), adv.float(), mask, **kwargs)
    f, keep, _ = reference_fipo(logp, old, adv, mask, 32.0, clip_range, high_only, safety, 10.0)
    torch.testing.assert_close(out.double(), adv[:, None] * f * keep, rtol=1e-4, atol=1e-5)


def test_fipo_advantages_long_completion_and_per_token_advantages():
    # T = 65,536 with (B, T) advantages
    logp, old, adv, mask = random_batch(2, 65536, seed=7)
    adv_bt = adv[:, None].expand(2, 65536).clone()
    out = fipo_advantages(logp.float(), old.float(), adv_bt.float(), mask)
    f, keep, _ = reference_fipo(logp, old, adv_bt, mask, 32.0, 0.2, True, 10.0, 10.0)
    torch.testing.assert_close(out.double(), adv_bt * f * keep, rtol=1e-4, atol=1e-5)


def test_fipo_advantages_bf16_inputs():
    logp, old, adv, mask = random_batch(2, 2000, seed=3, spikes=False)
    out = fipo_advantages(logp.bfloat16(), old.bfloat16(), adv.bfloat16(), mask)
    logp_b, old_b, adv_b = logp.bfloat16().double(), old.bfloat16().double(), adv.bfloat16().double()
    f, keep, _ = reference_fipo(logp_b, old_b, adv_b, mask, 32.0, 0.2, True, 10.0, 10.0)
    torch.testing.assert_close(out.double(), adv_b[:, None] * f * keep, rtol=1e-4, atol=1e-5)


def test_fipo_advantages_carry_no_gradient():
    generator = torch.Generator().manual_seed(0)
    logp = torch.randn(2, 10, generator=generator).requires_grad_()
    adv = torch.randn(2, generator=generator)
    out = fipo_advantages(logp, logp.detach() - 0.1, adv, torch.ones(2, 10))
    assert not out.requires_grad
    assert not fipo_weights(logp - 0.1, adv, torch.ones(2, 10)).weights.requires_grad


def test_fully_masked_rows_and_empty_completions():
    # no NaN/Inf for a row with no valid token, and T = 0 works
    logp, old, adv, mask = random_batch(3, 40, seed=5)
    mask[1] = False
    out = fipo_advantages(logp, old, adv, mask)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    empty = fipo_advantages(torch.zeros(2, 0), torch.zeros(2, 0), torch.ones(2), torch.zeros(2, 0))
    assert empty.shape == (2, 0)
