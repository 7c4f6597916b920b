"""The reward guard: errors name the reward, mismatched columns name both lengths, a reward without signal stops;
and the reward-spread stop, `RewardSpreadCallback`, on real runs of FIPOTrainer and GRPOTrainer."""

import asyncio
import contextlib
import logging
import math
import pickle
import warnings

import pytest
from conftest import PROMPTS, TINY_TRAINING
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from fipo_trl import FIPOConfig, FIPOTrainer, RewardSpreadCallback
from fipo_trl.errors import TrainingError
from fipo_trl.rewards import dapo_accuracy_reward
from fipo_trl.rewards.guard import (
    MAX_BATCHES_WITHOUT_SIGNAL,
    AsyncRewardGuard,
    RewardError,
    check_same_length,
    guard_reward,
)


def constant(value):
    def reward(completions, **kwargs):
        return [value] * len(completions)

    return reward


def test_guarded_reward_scores_like_the_reward_and_keeps_its_name():
    guarded = guard_reward(dapo_accuracy_reward, name="dapo_accuracy")
    assert guarded(["Answer: 2", "Answer: 3"], solution=["2", "2"]) == [1.0, -1.0]
    assert guarded.__name__ == "dapo_accuracy_reward"  # TRL's metric name is unchanged
    assert pickle.loads(pickle.dumps(guarded))(["Answer: 2"], solution=["2"]) == [1.0]


def test_exception_names_the_reward_the_line_that_raised_and_keeps_the_cause():
    def parse(text):
        raise ValueError("cannot parse\nsecond line")

    def flaky(completions, **kwargs):
        return [parse(text) for text in completions]

    line = parse.__code__.co_firstlineno + 1  # the `raise` in the reward's own code, not the guard's call
    message = rf"^reward 'my_pkg\.flaky' raised ValueError: cannot parse at .*test_reward_guard\.py:{line}$"
    with pytest.raises(RewardError, match=message) as info:
        guard_reward(flaky, name="my_pkg.flaky")(["a"])
    assert isinstance(info.value.__cause__, ValueError)


def test_length_mismatch_names_both_arguments_and_lengths():
    with pytest.raises(ValueError, match="completions has 2 items but solution has 1"):
        check_same_length(completions=["a", "b"], solution=["1"])
    message = "reward 'dapo_accuracy_reward' called with completions has 3 items but solution has 2"
    with pytest.raises(RewardError, match=message):
        guard_reward(dapo_accuracy_reward)(["a", "b", "c"], solution=["1", "2"])


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ((1.0 for _ in range(2)), "returned generator, expected a list"),
        ([1.0], "returned 1 rewards for 2 completions"),
        ([1.0, "high"], r"returned 'high' \(str\) for completion 1"),
    ],
)
def test_malformed_output_is_refused(output, message):
    with pytest.raises(RewardError, match=message):
        guard_reward(lambda completions, **kwargs: output, name="r")(["a", "b"])


@pytest.mark.parametrize("value", [None, math.nan])
def test_reward_without_signal_warns_then_stops_after_the_bound(value, caplog):
    guarded = guard_reward(constant(value), name="broken")
    with caplog.at_level(logging.WARNING, logger="fipo_trl.rewards.guard"):
        for _ in range(MAX_BATCHES_WITHOUT_SIGNAL - 1):
            guarded(["a", "b"])
    assert "Reward 'broken' returned" in caplog.text and "no learning signal" in caplog.text
    message = rf"reward 'broken' returned .*NaN for every completion of {MAX_BATCHES_WITHOUT_SIGNAL} batches"
    with pytest.raises(RewardError, match=message):
        guarded(["a", "b"])


def test_one_scored_completion_resets_the_count():
    values = iter([[None, None], [None, 1.0], [None, None], [None, None], [None, None]])
    guarded = guard_reward(lambda completions, **kwargs: next(values), name="sparse", max_batches_without_signal=3)
    for _ in range(4):
        guarded(["a", "b"])  # calls 3 and 4 are only the first two of a new run of empty batches
    with pytest.raises(RewardError):
        guarded(["a", "b"])


def test_partial_nan_is_reported_once(caplog):
    guarded = guard_reward(lambda completions, **kwargs: [1.0, math.nan], name="half")
    with caplog.at_level(logging.WARNING, logger="fipo_trl.rewards.guard"):
        guarded(["a", "b"])
        guarded(["a", "b"])
    assert caplog.text.count("returned NaN for 1 of 2 completions") == 1


def test_async_reward_stays_async():
    async def remote(completions, **kwargs):
        raise TimeoutError("judge did not answer")

    guarded = guard_reward(remote, name="judge")
    assert isinstance(guarded, AsyncRewardGuard)
    with pytest.raises(RewardError, match="reward 'judge' raised TimeoutError: judge did not answer"):
        asyncio.run(guarded(["a"]))


@pytest.mark.parametrize("reward", ["dapo_accuracy", "math_verify"])
def test_shipped_rewards_name_both_arguments_of_different_lengths(reward):
    from fipo_trl.rewards import dapo_accuracy_reward, get_math_verify_reward

    func = dapo_accuracy_reward if reward == "dapo_accuracy" else get_math_verify_reward(num_workers=1)
    # the same wording for both rewards and both directions (zip's own message named whichever ran out first)
    with pytest.raises(
        ValueError, match="^completions has 3 items but solution has 2: pass one solution per completion"
    ):
        func(["a", "b", "c"], solution=["1", "2"])
    with pytest.raises(ValueError, match="^completions has 1 item but solution has 2"):
        func(["a"], solution=["1", "2"])


def test_a_call_without_completions_is_no_batch_without_signal():
    guarded = guard_reward(constant(None), name="r", max_batches_without_signal=1)
    assert guarded([]) == []
    with pytest.raises(RewardError):
        guarded(["a"])


def _two_process_worker(rank, port, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # rank 0 never scores; rank 1 scores its completions in the first batch only
    batches = iter(
        [[None, None], [None, None], [None, None]] if rank == 0 else [[1.0, None], [None, None], [None, None]]
    )
    guarded = guard_reward(lambda completions, **kwargs: next(batches), name="r", max_batches_without_signal=2)
    guarded(["a", "b"])  # scored on rank 1: no batch without signal on either process
    guarded(["a", "b"])
    try:
        guarded(["a", "b"])
        results[rank] = "went on"
    except RewardError:
        results[rank] = "stopped"
    dist.destroy_process_group()


@pytest.mark.slow
def test_processes_decide_together_whether_a_batch_had_a_signal():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_two_process_worker, args=(port, results), nprocs=2)
    assert dict(results) == {0: "stopped", 1: "stopped"}  # both stop at the same call, so neither waits on the other


# ------------------------------------------------------------------------------------------- the reward-spread stop
def spread_only_at_step(step):
    """The same reward for every completion, except in the generation batch generated at `global_step == step`."""

    def reward(completions, trainer_state=None, **kwargs):
        if trainer_state.global_step == step:
            return [float(i % 2) for i in range(len(completions))]
        return [0.5] * len(completions)

    return reward


def train_until_stopped(tiny_model_dir, tmp_path, callbacks, trainer_cls=FIPOTrainer, reward=None, **overrides):
    """Train the tiny model (2 groups per generation batch, one every 2 steps) at most 8 steps; the last step."""
    config_cls = FIPOConfig if trainer_cls is FIPOTrainer else GRPOConfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = config_cls(output_dir=str(tmp_path), **{**TINY_TRAINING, "max_steps": 8, **overrides})
    trainer = trainer_cls(
        model=tiny_model_dir,
        reward_funcs=reward or spread_only_at_step(None),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
        callbacks=callbacks,
    )
    with pytest.raises(RewardError) if callbacks else contextlib.nullcontext() as info:
        trainer.train()
    return trainer.state.global_step, info


@pytest.mark.parametrize("trainer_cls", [FIPOTrainer, GRPOTrainer])
def test_spread_callback_stops_after_the_batches_and_groups_without_spread(tiny_model_dir, tmp_path, trainer_cls):
    # generation batches at steps 1, 3, 5, 7, each 2 groups: 3 batches reach 6 groups at step 5, 8 groups take 4
    step, info = train_until_stopped(tiny_model_dir, tmp_path, [RewardSpreadCallback(3, 6)], trainer_cls)
    assert step == 5 and "every group of the last 3 generation batches (6 prompts)" in str(info.value)
    step, _ = train_until_stopped(tiny_model_dir, tmp_path / "8", [RewardSpreadCallback(3, 8)], trainer_cls)
    assert step == 7
    assert issubclass(RewardError, TrainingError)


def test_without_the_callback_a_run_without_spread_trains_on(tiny_model_dir, tmp_path):
    # the stop is the CLI's policy: a library trainer is not given it
    step, _ = train_until_stopped(tiny_model_dir, tmp_path, [])
    assert step == 8


def test_a_batch_with_spread_resets_the_count(tiny_model_dir, tmp_path):
    # spread in the batch generated at step 3 (global_step 2): batches 1 | 3 reset | 5, 7 -> stops at 7, not 5
    callbacks = [RewardSpreadCallback(2, 4)]
    step, _ = train_until_stopped(tiny_model_dir, tmp_path, callbacks, reward=spread_only_at_step(2))
    assert step == 7


def test_a_log_of_several_steps_counts_every_batch_it_covers(tiny_model_dir, tmp_path):
    # logging_steps=4: each log covers 2 generation batches; the stop waits for the log (step 8, not 5)
    step, info = train_until_stopped(tiny_model_dir, tmp_path, [RewardSpreadCallback(3, 6)], logging_steps=4)
    assert step == 8 and "the last 4 generation batches (8 prompts)" in str(info.value)
