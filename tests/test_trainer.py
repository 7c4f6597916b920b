"""FIPOTrainer on a tiny local Qwen2: the loss against the official rules, and real training runs."""

import math
import warnings

import pytest
import torch
from peft import LoraConfig
from reference import reference_fipo
from trl import GRPOConfig, GRPOTrainer

from fipo_trl import FIPOConfig, FIPOTrainer


FIPO_METRICS = [
    "future_kl_mean", "weight_mean", "weight_min", "weight_max", "raw_weight_mean", "raw_weight_min",
    "raw_weight_max", "weight_clip_upper", "weight_clip_lower", "safety_capped_frac", "dual_clip_frac",
    "dropped_frac", "policy_kl", "abs_log_ratio_mean", "neg_ratio_2_3", "neg_ratio_3_4", "neg_ratio_4_c",
    "pos_mini_frac", "neg_is_max", "neg_is_p75", "neg_is_p995", "neg_is_p999", "pos_is_min", "pos_is_p25",
    "pos_is_median", "pos_is_p75", "pos_is_p995", "pos_is_p999", "pos_is_max",
]  # fmt: skip


def make_inputs(trainer, off_policy=True, seed=0):
    """A micro-batch as `_prepare_inputs` returns it, with stale log-probs that exercise every FIPO rule."""
    g = torch.Generator().manual_seed(seed)
    batch, prompt_len, completion_len = 6, 5, 12
    vocab = trainer.model.config.vocab_size
    completion_mask = torch.ones(batch, completion_len, dtype=torch.long)
    completion_mask[1, 9:] = 0
    completion_mask[4, 3:] = 0
    inputs = {
        "prompt_ids": torch.randint(0, vocab, (batch, prompt_len), generator=g),
        "prompt_mask": torch.ones(batch, prompt_len, dtype=torch.long),
        "completion_ids": torch.randint(0, vocab, (batch, completion_len), generator=g),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.2, -0.7, -1.1, 0.4, -0.3, 0.9]),
        "num_items_in_batch": completion_mask.sum() * trainer.args.steps_per_generation,
    }
    if off_policy:
        with torch.no_grad():
            logps = current_logps(trainer, inputs)
        shift = torch.randn(batch, completion_len, generator=g) * 0.3
        shift[2, [1, 5]] = -math.log(15.0)  # A < 0 row with two ratios of 15 > c: dropped (docs/fipo.md §2.7)
        shift[1, 2] = -math.log(12.0)  # A < 0, one dual-clipped token: kept, token loss capped at |A|·f·c
        shift[0, 4] = -math.log(12.0)  # A > 0 with ratio 12: clipped, and left out of the future sum
        shift[5, 6] = -25.0  # beyond the ±20 clamp
        shift[3, 7] = 4.0  # collapsed probability (ratio e^−4)
        inputs["old_per_token_logps"] = logps + shift
    return inputs


def current_logps(trainer, inputs):
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    width = inputs["completion_ids"].size(1)
    return GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, input_ids, attention_mask, width)[0]


def loss_and_grads(trainer, inputs):
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def reference_loss(trainer, inputs, detach_weights=True):
    """The official loss (docs/fipo.md §2.6, §2.11) in float64: weighted A, PPO clip, dual clip as min(Lc, −Ã·c)."""
    args = trainer.args
    logp = current_logps(trainer, inputs).double()
    old = inputs["old_per_token_logps"].double()
    mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
    adv = inputs["advantages"].double()
    f, keep, _ = reference_fipo(
        logp.detach(), old, adv, mask, args.fipo_decay_rate, args.fipo_clip_range, args.fipo_clip_high_only,
        args.fipo_safety_threshold, args.delta,
    )  # fmt: skip
    s = (logp - old).clamp(-20, 20)
    ratio = s.exp()
    if not detach_weights:  # the same weights, but letting gradient flow through FutureKL (what FIPO must not do)
        f = f + (s - s.detach()).flip(-1).cumsum(-1).flip(-1)
    weighted = adv[:, None] * f
    lc = torch.maximum(-weighted * ratio, -weighted * ratio.clamp(1 - args.epsilon, 1 + args.epsilon_high))
    per_token = torch.where(weighted < 0, torch.minimum(lc, -weighted * args.delta), lc)
    if args.loss_type == "bnpo":  # the official micro-batch token mean over the final mask
        return (per_token * keep).sum() / keep.sum()
    normalizer = inputs["num_items_in_batch"] / args.steps_per_generation  # TRL dapo: one accumulation window
    return (per_token * keep).sum() / normalizer


def assert_grads_close(grads, other, rtol=1e-4, atol=1e-6):
    for name, grad in grads.items():
        torch.testing.assert_close(grad, other[name], rtol=rtol, atol=atol, msg=name)


# ------------------------------------------------------------------------------------------------------- the loss
def test_on_policy_loss_and_grads_identical_to_dapo(make_trainer, tmp_path):
    # no old log-probs: FIPO must be bit-identical to GRPOTrainer(loss_type="dapo", delta=10)
    fipo = make_trainer(tmp_path / "fipo", steps_per_generation=8)
    dapo = make_trainer(
        tmp_path / "dapo", GRPOTrainer, loss_type="dapo", delta=10.0, epsilon_high=0.28,
        steps_per_generation=8, disable_dropout=True,
    )  # fmt: skip
    inputs = make_inputs(fipo, off_policy=False)
    fipo_loss, fipo_grads = loss_and_grads(fipo, inputs)
    dapo_loss, dapo_grads = loss_and_grads(dapo, inputs)
    assert torch.equal(fipo_loss, dapo_loss)
    for name, grad in fipo_grads.items():
        assert torch.equal(grad, dapo_grads[name]), name
    assert fipo._metrics["train"]["fipo/weight_mean"][-1] == 1.0


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo"])
@pytest.mark.parametrize(
    "mode",
    [{}, {"fipo_clip_high_only": False, "fipo_safety_threshold": 3.0}, {"fipo_clip_range": 0.0}],
    ids=["32B", "7B", "unclipped"],
)
def test_off_policy_loss_and_grads_match_official_reference(make_trainer, loss_type, mode):
    # every rule at once: clamp, participation filter, weights, safety cap, dual clip, sequence drop, aggregation
    trainer = make_trainer(loss_type=loss_type, fipo_decay_rate=4.0, **mode)
    inputs = make_inputs(trainer)
    loss, grads = loss_and_grads(trainer, inputs)
    trainer.model.zero_grad()
    expected = reference_loss(trainer, inputs)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-7)
    assert_grads_close(grads, {n: p.grad for n, p in trainer.model.named_parameters()})
    assert trainer._metrics["train"]["fipo/dropped_frac"][-1] == pytest.approx(1 / 6)


def test_weights_carry_no_gradient(make_trainer):
    # FIPO's gradients equal the reference with f frozen, and differ from a reference that backpropagates through f
    trainer = make_trainer(fipo_clip_range=0.0, fipo_decay_rate=4.0)
    inputs = make_inputs(trainer, seed=1)
    _, grads = loss_and_grads(trainer, inputs)
    trainer.model.zero_grad()
    reference_loss(trainer, inputs, detach_weights=False).backward()
    leaky = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    assert any(not torch.allclose(grads[n], leaky[n], rtol=1e-3, atol=1e-6) for n in grads)
    trainer.model.zero_grad()
    reference_loss(trainer, inputs).backward()
    assert_grads_close(grads, {n: p.grad for n, p in trainer.model.named_parameters()})


def test_tool_tokens_neither_contribute_nor_receive_weight(make_trainer):
    # tool/environment tokens (tool_mask = 0) are out of the Future-KL sum and out of the loss
    trainer = make_trainer(fipo_clip_high_only=False, fipo_decay_rate=4.0)
    inputs = make_inputs(trainer, seed=2)
    inputs["tool_mask"] = torch.ones_like(inputs["completion_mask"])
    inputs["tool_mask"][:, 3:6] = 0
    loss, grads = loss_and_grads(trainer, inputs)
    trainer.model.zero_grad()
    expected = reference_loss(trainer, inputs)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-7)
    assert_grads_close(grads, {n: p.grad for n, p in trainer.model.named_parameters()})


def test_exactly_one_policy_forward_per_micro_step(make_trainer):
    # the parent loss reuses FIPO's forward instead of running its own
    trainer = make_trainer()
    inputs = make_inputs(trainer)
    calls = []
    handle = trainer.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        loss_and_grads(trainer, inputs)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert trainer._forward_cache is None


def test_inputs_are_not_modified(make_trainer):
    # the buffered slice is reused by later iterations: FIPO must not write into it
    trainer = make_trainer()
    inputs = make_inputs(trainer)
    before = {k: v.clone() for k, v in inputs.items()}
    loss_and_grads(trainer, inputs)
    assert inputs.keys() == before.keys()
    assert all(torch.equal(inputs[k], before[k]) for k in before)


def test_vllm_importance_sampling_stays_a_separate_factor(make_trainer):
    # TRL's vLLM IS ratio multiplies the loss; Δ never comes from vLLM's sampling log-probs
    trainer = make_trainer(loss_type="bnpo")
    inputs = make_inputs(trainer)
    plain, _ = loss_and_grads(trainer, inputs)
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True
    sampling = inputs["old_per_token_logps"] + torch.randn_like(inputs["old_per_token_logps"])
    sampling[:, -2:] = float("nan")  # vLLM gives NaN where it returned no log-prob
    with_vllm = {**inputs, "importance_sampling_ratio": torch.full((6, 1), 0.5), "sampling_per_token_logps": sampling}
    corrected, _ = loss_and_grads(trainer, with_vllm)
    torch.testing.assert_close(corrected, plain * 0.5)


# -------------------------------------------------------------------------------------------------------- config
def test_config_defaults_reproduce_official_32b():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the default geometry is off-policy: no warning
        args = FIPOConfig(output_dir="unused", use_cpu=True, bf16=False, gradient_accumulation_steps=2)
    assert (args.loss_type, args.epsilon, args.epsilon_high, args.delta, args.beta) == ("dapo", 0.2, 0.28, 10.0, 0.0)
    assert (args.fipo_decay_rate, args.fipo_clip_range, args.fipo_clip_high_only) == (32.0, 0.2, True)
    assert args.fipo_safety_threshold == 10.0 and args.disable_dropout
    assert args.steps_per_generation == 16  # 8 optimizer steps per generation batch


def test_on_policy_config_warns():
    with pytest.warns(UserWarning, match="FIPO is exactly DAPO.*steps_per_generation"):
        FIPOConfig(output_dir="unused", use_cpu=True, bf16=False, steps_per_generation=1)


def test_num_iterations_config_warns():
    with pytest.warns(UserWarning, match="num_iterations=2 revisits"):
        FIPOConfig(output_dir="unused", use_cpu=True, bf16=False, num_iterations=2)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loss_type", "cispo", "loss_type='cispo' is not supported"),
        ("loss_type", "sapo", "loss_type='sapo' is not supported"),
        ("loss_type", "luspo", "loss_type='luspo' is not supported"),
        ("loss_type", "vespo", "loss_type='vespo' is not supported"),
        ("importance_sampling_level", "sequence", "importance_sampling_level"),
        ("delta", None, "delta=None must be"),
        ("delta", 1.2, "delta=1.2 must be"),
        ("fipo_decay_rate", 0.0, "fipo_decay_rate"),
        ("fipo_clip_range", -0.1, "fipo_clip_range"),
        ("fipo_safety_threshold", 0.0, "fipo_safety_threshold"),
    ],
)
def test_config_refuses(field, value, message):
    with pytest.raises(ValueError, match=message):
        FIPOConfig(output_dir="unused", use_cpu=True, bf16=False, **{field: value})


def test_config_refuses_symmetric_clip_of_one():
    with pytest.raises(ValueError, match="fipo_clip_range=1.0"):
        FIPOConfig(output_dir="unused", use_cpu=True, bf16=False, fipo_clip_range=1.0, fipo_clip_high_only=False)


def test_trainer_refuses_grpo_config(tiny_model_dir, tmp_path):
    with pytest.raises(TypeError, match="FIPOConfig"):
        FIPOTrainer(
            model=tiny_model_dir,
            reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
            args=GRPOConfig(str(tmp_path), use_cpu=True),
        )


# ------------------------------------------------------------------------------------------------------ training
def test_off_policy_training_updates_every_parameter(make_trainer):
    # 2 optimizer steps per generation: the first is on-policy (f = 1), the second is stale (f ≠ 1)
    trainer = make_trainer(fipo_clip_high_only=False)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), name
    logs = [h for h in trainer.state.log_history if "fipo/weight_mean" in h]
    assert len(logs) == 4 and all(f"fipo/{m}" in logs[0] for m in FIPO_METRICS)
    for on_policy in (logs[0], logs[2]):
        assert on_policy["fipo/abs_log_ratio_mean"] < 1e-5
        assert on_policy["fipo/weight_min"] == pytest.approx(1.0, abs=1e-5)
        assert on_policy["fipo/weight_max"] == pytest.approx(1.0, abs=1e-5)
    for stale in (logs[1], logs[3]):
        assert stale["fipo/abs_log_ratio_mean"] > 1e-3
        assert stale["fipo/weight_min"] < 0.999 or stale["fipo/weight_max"] > 1.001
    view = trainer.fipo_token_view
    assert view["weights"].shape == view["completion_ids"].shape == view["log_ratio"].shape
    assert view["advantage"] != 0 and view["prompt_ids"].numel() > 0


def test_lora_training(make_trainer):
    # PEFT: only the adapters train, and they do
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(max_steps=2, peft_config=lora)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert {n for n in before if "lora_B" in n} <= changed


def test_bf16_model_trains(make_trainer):
    # a bf16 policy: the future sum still runs in fp32 and nothing turns NaN
    trainer = make_trainer(max_steps=2, model_init_kwargs={"dtype": torch.bfloat16}, learning_rate=0.01)
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    trainer.train()
    logs = [h for h in trainer.state.log_history if "fipo/weight_mean" in h]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["fipo/weight_mean"]) for h in logs)
    assert logs[1]["fipo/abs_log_ratio_mean"] > 0


def test_checkpoint_and_resume(make_trainer, tmp_path):
    # save at step 2, resume and finish at step 4 with the step count continued
    first = make_trainer(max_steps=2, save_strategy="steps", save_steps=2)
    first.train()
    assert (tmp_path / "checkpoint-2").is_dir()
    second = make_trainer(max_steps=4, save_strategy="steps", save_steps=2)
    second.train(resume_from_checkpoint=True)
    assert second.state.global_step == 4
    steps = [h["step"] for h in second.state.log_history if "fipo/weight_mean" in h]
    assert steps == [1, 2, 3, 4]
    assert (tmp_path / "checkpoint-4").is_dir()


def test_fully_masked_micro_batch_is_finite(make_trainer):
    # every completion empty (e.g. all tool tokens): loss and gradients stay finite, metrics are NaN, not errors
    trainer = make_trainer()
    inputs = make_inputs(trainer)
    inputs["completion_mask"] = torch.zeros_like(inputs["completion_mask"])
    inputs["num_items_in_batch"] = torch.tensor(0)
    loss, grads = loss_and_grads(trainer, inputs)
    assert loss.item() == 0.0 and all(torch.isfinite(g).all() for g in grads.values())
    assert math.isnan(trainer._metrics["train"]["fipo/weight_mean"][-1])
