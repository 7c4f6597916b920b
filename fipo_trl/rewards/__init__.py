r"""Verifiable math rewards with TRL's reward signature `(completions, **dataset_columns) -> list[float | None]`.

1. [`dapo_accuracy_reward`] (`dapo.py`): the official DAPO/FIPO scorer (`math_dapo.py`, described in
   `docs/scorer.md`), +1.0 / -1.0, quirks included; [`dapo_reward_funcs`]: the official reward list, accuracy plus
   TRL's soft overlong punishment.
2. [`math_verify_reward`] (`math_verify_reward.py`): open-r1/TRL's `\boxed{}` convention checked by `math_verify`
   in killable worker processes (`math_verify_pool.py`).
3. [`REWARD_FUNCS_REGISTRY`] and [`get_reward_funcs`] (here): the reward functions of a `fipo-trl train` recipe, by
   name, each wrapped by the guard of `guard.py` (errors name the reward; no signal for many batches stops the run).

Completions may be plain strings or chat messages (the last assistant message is scored). Ground truth comes from
the `solution` column that the loaders of [`fipo_trl.data.math_datasets`] produce.
"""

import importlib
import math
import os
import sys

from ..errors import UsageError
from .dapo import (
    INVALID_ANSWER,
    dapo_accuracy_reward,
    dapo_reward_funcs,
    extract_boxed_answer,
    extract_dapo_answer,
    normalize_final_answer,
)
from .guard import guard_reward
from .math_verify_reward import MathVerifyReward, get_math_verify_reward, math_verify_reward


__all__ = [
    "INVALID_ANSWER",
    "MathVerifyReward",
    "REWARD_FUNCS_REGISTRY",
    "dapo_accuracy_reward",
    "dapo_reward_funcs",
    "extract_boxed_answer",
    "extract_dapo_answer",
    "get_math_verify_reward",
    "get_reward_funcs",
    "math_verify_reward",
    "normalize_final_answer",
    "with_accuracy_metric",
]


# --- the rewards of a `fipo-trl train` recipe, by name ---------------------------------------------------------------


def _soft_overlong(script_args, training_args):
    from trl.rewards import get_soft_overlong_punishment

    return get_soft_overlong_punishment(
        max_completion_len=training_args.max_completion_length,
        soft_punish_cache=script_args.overlong_buffer_length,
    )


# name → builder `(script_args, training_args) -> reward function`; a recipe names its rewards with these keys
REWARD_FUNCS_REGISTRY = {
    "dapo_accuracy": lambda script_args, training_args: dapo_accuracy_reward,
    "math_verify": lambda script_args, training_args: math_verify_reward,
    "soft_overlong": _soft_overlong,
}


def with_accuracy_metric(reward_func):
    """`reward_func`, also logging `accuracy` (the fraction of completions it scores above 0) through TRL."""

    def accuracy_logged(completions, log_metric=None, **kwargs):
        rewards = reward_func(completions, log_metric=log_metric, **kwargs)
        # only numbers count: what else a broken reward returns is for its guard to name
        numbers = rewards if isinstance(rewards, list) else []
        scored = [reward for reward in numbers if isinstance(reward, (int, float)) and not math.isnan(reward)]
        if log_metric is not None and scored:
            log_metric("accuracy", sum(reward > 0 for reward in scored) / len(scored))
        return rewards

    accuracy_logged.__name__ = getattr(reward_func, "__name__", type(reward_func).__name__)  # TRL's metric name
    return accuracy_logged


def get_reward_funcs(script_args, training_args) -> list:
    """
    The reward functions of a recipe's `reward_funcs`: names of [`REWARD_FUNCS_REGISTRY`] or dotted import paths.

    `soft_overlong` is TRL's DAPO overlong penalty with `max_completion_len=training_args.max_completion_length` and
    `soft_punish_cache=script_args.overlong_buffer_length`. The first function is the correctness reward: it also
    logs `accuracy` ([`with_accuracy_metric`]) and scores the held-out check.

    Raises:
        UsageError: for an unknown name, a dotted path that does not import, or an empty list.
    """
    if isinstance(script_args.reward_funcs, str):  # `reward_funcs: dapo_accuracy` in YAML: one string, not a list
        raise UsageError(
            f"reward_funcs: {script_args.reward_funcs!r} is a string; write a list: reward_funcs: "
            f"[{script_args.reward_funcs}] in the recipe, or --reward_funcs NAME [NAME ...] on the command line"
        )
    funcs = []
    for name in script_args.reward_funcs:
        if name in REWARD_FUNCS_REGISTRY:
            funcs.append(REWARD_FUNCS_REGISTRY[name](script_args, training_args))
        elif "." in name:
            module_name, attr = name.rsplit(".", 1)
            sys.path.insert(0, os.getcwd())  # a recipe may name a module next to it, as TRL's grpo script allows
            try:
                func = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise UsageError(f"cannot import reward function {name!r}: {exc}") from None
            except Exception as exc:  # the module's own code failed as it was imported (a SyntaxError, a NameError)
                raise UsageError(f"cannot import reward function {name!r}: {import_failure(exc)}") from exc
            if not callable(func):
                raise UsageError(
                    f"reward function {name!r} is a {type(func).__name__}, not a function: name a function "
                    "(completions, **columns) -> list[float | None]"
                )
            funcs.append(func)
        else:
            comma = "; separate names with spaces, not commas" if "," in name else ""
            raise UsageError(
                f"unknown reward function {name!r}: use {', '.join(REWARD_FUNCS_REGISTRY)} or a dotted import "
                f"path{comma}"
            )
    if not funcs:
        raise UsageError("reward_funcs is empty: name at least one reward function")
    funcs[0] = with_accuracy_metric(funcs[0])
    # each reward named as the recipe names it in its errors, and stopped when it gives no signal
    return [guard_reward(func, name=name) for func, name in zip(funcs, script_args.reward_funcs, strict=True)]


def import_failure(exc) -> str:
    """`SyntaxError: invalid syntax at my_rewards.py:3`: the error a module raised on import, where in its code."""
    import traceback

    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} at {exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
