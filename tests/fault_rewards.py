"""Broken reward functions for tests/test_faults.py, named in recipes by dotted path (`fault_rewards.nan_reward`)."""

import math


def nan_reward(completions, **kwargs):
    return [math.nan] * len(completions)


def none_reward(completions, **kwargs):
    return [None] * len(completions)


def raising_reward(completions, trainer_state=None, **kwargs):
    # fails from the third step on, so that the run has saved checkpoint-2 first
    if trainer_state is not None and trainer_state.global_step >= 2:
        raise ValueError("cannot parse the completion")
    return [0.0] * len(completions)


def none_at_first_reward(completions, trainer_state=None, **kwargs):
    # no score for the first generation batch (a reward that applies later): logs a NaN reward, then recovers
    if trainer_state is not None and trainer_state.global_step == 0:
        return [None] * len(completions)
    return [float(len(str(completion)) % 2) for completion in completions]


def interrupting_reward(completions, **kwargs):
    # Ctrl-C while the first batch is scored, before any checkpoint
    raise KeyboardInterrupt


def constant_reward(completions, **kwargs):
    # scores every completion, the same: no group ever has a reward spread
    return [0.5] * len(completions)


def strings_reward(completions, **kwargs):
    return ["1.0"] * len(completions)


NOT_A_FUNCTION = 0.5  # a module attribute named as a reward by mistake


def inf_reward(completions, **kwargs):
    # scores every completion, but no value of inf can be learned from
    return [math.inf] * len(completions)
