"""
A guard around each reward function of a run: errors that name the reward, and a stop when a reward gives no signal.

TRL calls reward functions as `reward_func(prompts=..., completions=..., **columns)` and turns `None` (and NaN) into
"no score". A reward that raises ends the run in a traceback that does not say which reward it was; a reward that
returns NaN or `None` for every completion gives every completion the same (zero) advantage, so the run trains at
loss 0 and grad norm 0 for as long as it is left running. [`guard_reward`] wraps a reward function so that:

1. an exception becomes a [`RewardError`] naming the reward: `reward 'my_reward' raised ValueError: ...`;
2. list arguments whose length differs from `completions` (a `solution` column of another length) are refused with
   both names and lengths, before the reward sees them;
3. an output of the wrong type or length is refused with what was expected;
4. NaN is reported once (TRL treats it like `None`, which is rarely what a NaN means);
5. `inf` or `-inf` stops the run at once: one infinite reward makes its group's mean infinite and every advantage of
   the group NaN or 0, so no value of it can be learned from (docs/rewards-and-data.md);
6. a reward that scores none of the completions of [`MAX_BATCHES_WITHOUT_SIGNAL`] batches in a row stops the run.

Rewards that all score, but give every completion of a group the same total, leave every advantage at 0 as surely:
that needs the group structure, which only the trainer has; [`~fipo_trl.rewards.spread.RewardSpreadCallback`] stops
such a run from TRL's logged `frac_reward_zero_std`.
"""

import logging
import math
import traceback

from ..errors import TrainingError


logger = logging.getLogger(__name__)

# `None` is TRL's "this reward does not apply to this completion" (a code reward on a math problem), so one batch
# with no score at all can be legitimate; a reward that applies to none of the hundreds of completions of three
# generation batches in a row is broken, and the run has trained on nothing since. Counted in reward calls, that is
# generation batches (rounds, with dynamic sampling): with the official 8 optimizer steps per batch, a run stops within
# 24 steps.
MAX_BATCHES_WITHOUT_SIGNAL = 3


class RewardError(TrainingError):
    """A reward function failed or gave no usable reward during training; the message names it."""


def check_same_length(**columns) -> None:
    """
    Refuse per-completion arguments of different lengths, naming each argument and its length.

    Example:
    ```python
    >>> check_same_length(completions=["a", "b"], solution=["1"])
    Traceback (most recent call last):
    ValueError: completions has 2 items but solution has 1: pass one solution per completion ...
    ```
    """
    (first, first_values), *others = columns.items()

    def items(values):
        return f"{len(values)} item" + ("" if len(values) == 1 else "s")

    for name, values in others:
        if len(values) != len(first_values):
            raise ValueError(
                f"{first} has {items(first_values)} but {name} has {len(values)}: pass one {name} per "
                f"{first.rstrip('s')} (repeat each prompt's {name} for each of its completions)"
            )


def _global_counts(*counts: int) -> list[int]:
    """`counts` summed over all processes of a distributed run (each process scores its own completions)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(counts)
    import torch

    # NCCL reduces only GPU tensors (accelerate has set each process's device); gloo reduces CPU tensors
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    # every process calls each reward once per batch, so this collective is reached by all of them
    totals = torch.tensor(counts, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


class RewardGuard:
    """
    A reward function with the checks of this module; called exactly like the function it wraps.

    Args:
        reward_func (`callable`):
            A TRL reward function, `(completions, **kwargs) -> list[float | None]`.
        name (`str`, *optional*):
            How error messages name the reward (the recipe's name for it); defaults to the function's name.
        max_batches_without_signal (`int`, *optional*, defaults to `MAX_BATCHES_WITHOUT_SIGNAL`):
            Consecutive calls without a single score after which [`RewardError`] stops the run.
    """

    def __init__(self, reward_func, name=None, max_batches_without_signal=MAX_BATCHES_WITHOUT_SIGNAL):
        from trl.trainer.utils import get_callable_name  # TRL's import takes seconds: not at `fipo_trl.rewards` import

        self.reward_func = reward_func
        self.__name__ = get_callable_name(reward_func)  # TRL names the reward's metrics after it: unchanged
        self.name = name or self.__name__
        self.max_batches_without_signal = max_batches_without_signal
        self.batches_without_signal = 0
        self._nan_reported = False

    def _check_arguments(self, completions, kwargs):
        columns = {key: value for key, value in kwargs.items() if isinstance(value, (list, tuple))}
        try:
            check_same_length(completions=completions, **columns)
        except ValueError as exc:
            raise RewardError(f"reward {self.name!r} called with {exc}") from None

    def _failed(self, exc):
        message = str(exc).strip().splitlines()
        detail = f": {message[0]}" if message else ""
        # the one line replaces the traceback: it keeps where in the reward's own code the error was raised
        frames = traceback.extract_tb(exc.__traceback__)[1:]  # [0] is the guard's call
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        return RewardError(f"reward {self.name!r} raised {type(exc).__name__}{detail}{where}")

    def _checked(self, rewards, num_completions):
        if not isinstance(rewards, (list, tuple)):
            raise RewardError(
                f"reward {self.name!r} returned {type(rewards).__name__}, expected a list of floats (or None), "
                "one per completion"
            )
        if len(rewards) != num_completions:
            raise RewardError(
                f"reward {self.name!r} returned {len(rewards)} rewards for {num_completions} completions"
            )
        num_nan = 0
        for index, reward in enumerate(rewards):
            if reward is None:
                continue
            try:
                num_nan += math.isnan(reward)
                infinite = math.isinf(reward)
            except TypeError:
                raise RewardError(
                    f"reward {self.name!r} returned {reward!r} ({type(reward).__name__}) for completion {index}: "
                    "a reward is a float, or None where it does not apply"
                ) from None
            if infinite:  # the group's mean is then ±inf and every advantage NaN or 0: nothing to learn from
                raise RewardError(
                    f"reward {self.name!r} returned {reward} for completion {index}: a reward must be finite (return "
                    "None where it does not apply); fix the reward function"
                )
        num_scored = sum(reward is not None for reward in rewards) - num_nan
        if num_nan and not self._nan_reported:
            self._nan_reported = True
            logger.warning(
                "Reward %r returned NaN for %d of %d completions; TRL counts NaN as 'no score', like None. "
                "Return None on purpose, or fix what produces the NaN.",
                self.name,
                num_nan,
                num_completions,
            )
        self._count_signal(num_scored, num_completions, num_nan)
        return rewards

    def _count_signal(self, num_scored, num_completions, num_nan):
        total_scored, total_completions = _global_counts(num_scored, num_completions)
        if total_completions == 0:  # nothing to score (an empty held-out shard on every process)
            return
        if total_scored > 0:
            self.batches_without_signal = 0
            return
        self.batches_without_signal += 1
        what = "NaN" if num_nan == num_completions else "None or NaN"
        if self.batches_without_signal >= self.max_batches_without_signal:
            raise RewardError(
                f"reward {self.name!r} returned {what} for every completion of {self.batches_without_signal} "
                "batches in a row: the run cannot learn (every advantage is 0); fix the reward function"
            )
        logger.warning(
            "Reward %r returned %s for all %d completions of this batch: no learning signal (loss 0). "
            "The run stops after %d such batches in a row.",
            self.name,
            what,
            num_completions,
            self.max_batches_without_signal,
        )

    def __call__(self, completions, **kwargs):
        self._check_arguments(completions, kwargs)
        try:
            rewards = self.reward_func(completions=completions, **kwargs)
        except RewardError:
            raise
        except Exception as exc:
            raise self._failed(exc) from exc
        return self._checked(rewards, len(completions))


class AsyncRewardGuard(RewardGuard):
    """[`RewardGuard`] for an `async` reward function; TRL awaits it with the other async rewards."""

    async def __call__(self, completions, **kwargs):
        self._check_arguments(completions, kwargs)
        try:
            rewards = await self.reward_func(completions=completions, **kwargs)
        except RewardError:
            raise
        except Exception as exc:
            raise self._failed(exc) from exc
        return self._checked(rewards, len(completions))


def guard_reward(reward_func, name=None, max_batches_without_signal=MAX_BATCHES_WITHOUT_SIGNAL) -> RewardGuard:
    """
    Wrap `reward_func` in a [`RewardGuard`] (an [`AsyncRewardGuard`] when it is `async`, so TRL still awaits it).

    Args:
        reward_func (`callable`):
            A TRL reward function.
        name (`str`, *optional*):
            How messages name it (the recipe's name); defaults to the function's name.
        max_batches_without_signal (`int`, *optional*, defaults to `MAX_BATCHES_WITHOUT_SIGNAL`):
            Consecutive calls without a single score after which the run stops.

    Returns:
        [`RewardGuard`]: callable like `reward_func`, with the same `__name__`.
    """
    from trl.trainer.utils import is_async_callable

    guard_class = AsyncRewardGuard if is_async_callable(reward_func) else RewardGuard
    return guard_class(reward_func, name=name, max_batches_without_signal=max_batches_without_signal)
