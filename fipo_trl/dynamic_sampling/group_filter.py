"""Dynamic sampling (DAPO's group filter) as pure functions on tensors and lists: no TRL, no trainer.

The official FIPO/DAPO run (verl `algorithm.filter_groups`, docs/fipo.md §3.2) does not train on every generated group:

1. each round generates `prompts_per_round` prompts × G completions (32B script: 2048 × 16);
2. it drops the groups whose G values of the filter metric are all equal (official metric `acc`): their advantages
   are 0, so they carry no gradient, yet their tokens count in the token-mean denominator;
3. it keeps generating rounds until enough groups survive (32B: 512), at most `max_num_gen_batches` rounds (10;
   an error past that, 0 = no limit), then truncates the survivors, in generation order, to exactly that number;
4. it logs the number of rounds as `num_gen_batches`.

[`~fipo_trl.DynamicSamplingMixin`] feeds these functions from TRL's batch; they are tested against plain Python
references (`tests/test_dynamic_sampling.py`).
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import TrainingError


METRICS = ("accuracy", "reward")  # or the name of one reward function
ON_LIMIT = ("raise", "fill")
_STREAM_KEY = 0x5EED  # keeps the stream's order apart from TRL's sampler, which is seeded with the same `seed`


class RoundLimitError(TrainingError):
    """`max_num_gen_batches` rounds kept too few groups (`dynamic_sampling_on_limit="raise"`, the official behaviour).

    A [`TrainingError`], like a failing reward: `fipo-trl train` reports it as one line with the step and the last
    checkpoint; the fix is in the recipe (more rounds, `"fill"`, other data) and the run can resume from there.
    """


class RoundSizes(NamedTuple):
    """Groups (prompts) a generation batch keeps, and prompts generated per filter round."""

    kept_groups: int
    prompts_per_round: int


def round_sizes(
    generation_batch_size: int, num_generations: int, prompts_per_round: int | None, num_processes: int
) -> RoundSizes:
    """
    The round geometry of dynamic sampling, refused when it cannot work.

    Args:
        generation_batch_size (`int`): completions per generation batch over all processes (TRL's field).
        num_generations (`int`): G, completions per prompt.
        prompts_per_round (`int` or `None`): `dynamic_sampling_prompts_per_round`; `None` = one generation batch.
        num_processes (`int`): training processes; a round's completions are split evenly over them.

    Raises:
        ValueError: a round smaller than the kept batch, or one that does not split over the processes.
    """
    kept = generation_batch_size // num_generations
    per_round = prompts_per_round or kept
    if per_round < kept:
        raise ValueError(
            f"dynamic_sampling_prompts_per_round={per_round} is smaller than the {kept} groups a "
            f"generation batch keeps (generation_batch_size / num_generations): set it to at least {kept} "
            "(official: 4 × 512 = 2048), or leave it unset to draw one generation batch per round."
        )
    if per_round * num_generations % num_processes:
        raise ValueError(
            f"dynamic_sampling_prompts_per_round={per_round} × num_generations={num_generations} completions "
            f"per round do not split evenly over {num_processes} processes: choose a round size whose completions "
            f"are a multiple of {num_processes}."
        )
    return RoundSizes(kept, per_round)


def check_dynamic_sampling_metric(args: Any, reward_func_names: Sequence[str]) -> None:
    """
    Refuse a `dynamic_sampling_metric` that names no reward function of the run, before any model is loaded.

    Args:
        args: anything with [`DynamicSamplingConfig`]'s `dynamic_sampling` and `dynamic_sampling_metric` (nothing is
            checked when the filter is off).
        reward_func_names (`Sequence[str]`): the rewards' names as TRL gives them (`GRPOTrainer.reward_func_names`:
            a function's `__name__`).

    Raises:
        ValueError: naming the metric and the names it may take.
    """
    metric = args.dynamic_sampling_metric
    if args.dynamic_sampling and metric not in METRICS and metric not in reward_func_names:
        raise ValueError(
            f"dynamic_sampling_metric={metric!r} is not {METRICS[0]!r}, {METRICS[1]!r} or a reward function of "
            f"this run ({', '.join(reward_func_names)})."
        )


def metric_values(
    rewards_per_func: torch.Tensor, metric: str, reward_func_names: Sequence[str], reward_weights: torch.Tensor
) -> torch.Tensor:
    """
    The value each completion's group is filtered on.

    Args:
        rewards_per_func (`torch.Tensor` of shape `(N, F)`):
            One column per reward function, NaN where a function returned None (TRL's `_calculate_rewards`).
        metric (`str`):
            `"accuracy"`: 1 if the first reward function's value is > 0, else 0 (the official `acc` of the ±1 DAPO
            scorer); `"reward"`: the weighted sum of all rewards (TRL's `reward`); otherwise the name of one reward
            function, whose raw value is used.
        reward_func_names (`Sequence[str]`): names of the `F` reward functions, in column order.
        reward_weights (`torch.Tensor` of shape `(F,)`): TRL's `reward_weights`.

    Returns:
        `torch.Tensor` of shape `(N,)`, float, NaN for a completion that has no value.
    """
    if metric == "accuracy":
        first = rewards_per_func[:, 0]
        return torch.where(first.isnan(), first, (first > 0).to(first.dtype))
    if metric == "reward":
        total = (rewards_per_func * reward_weights.to(rewards_per_func)).nansum(dim=1)
        return total.masked_fill(rewards_per_func.isnan().all(dim=1), float("nan"))
    if metric not in reward_func_names:
        raise ValueError(f"dynamic_sampling_metric={metric!r} is neither {METRICS} nor a reward function name")
    return rewards_per_func[:, list(reward_func_names).index(metric)]


class GroupFilter(NamedTuple):
    """Per-group verdicts of `filter_groups`, each a bool tensor of shape `(N / G,)`."""

    keep: torch.Tensor  # at least two different metric values: the group has signal
    all_correct: torch.Tensor  # dropped, and every completion is correct (first reward > 0)
    all_wrong: torch.Tensor  # dropped, and no completion is correct


def filter_groups(values: torch.Tensor, correct: torch.Tensor, num_generations: int) -> GroupFilter:
    """
    Keep the groups whose metric is not constant (official: std of the group's `acc` > 0).

    Args:
        values (`torch.Tensor` of shape `(N,)`):
            Metric per completion (see `metric_values`), groups as consecutive blocks of `num_generations`. NaN values
            are ignored; a group with fewer than two distinct non-NaN values is dropped.
        correct (`torch.Tensor` of shape `(N,)`, bool):
            Correctness per completion (first reward > 0), only used to say why a group was dropped.
        num_generations (`int`): G, completions per prompt.

    Returns:
        `GroupFilter` with tensors of shape `(N / G,)`.
    """
    grouped = values.view(-1, num_generations)
    scored = ~grouped.isnan()
    # "not all equal" as max > min: exact for any value, where a float std can come out as 1e-17 for equal values
    highest = grouped.masked_fill(~scored, -float("inf")).amax(dim=1)
    lowest = grouped.masked_fill(~scored, float("inf")).amin(dim=1)
    keep = highest > lowest
    correct = correct.view(-1, num_generations)
    return GroupFilter(keep, ~keep & correct.all(dim=1), ~keep & ~correct.any(dim=1))


def select_groups(keeps: Sequence[torch.Tensor], num_groups: int, fill: bool = False) -> list[tuple[int, int]]:
    """
    The groups of the training batch, as `(round, group)` pairs: the kept groups in generation order, truncated to
    `num_groups` (official: `batch[:train_batch_size × n]`).

    Args:
        keeps (`Sequence[torch.Tensor]`): one bool tensor per round, `GroupFilter.keep`.
        num_groups (`int`): groups the training batch holds.
        fill (`bool`): when too few groups were kept, complete the batch with dropped groups, in generation order
            (they have advantage 0, as without the filter), instead of returning fewer.
    """
    kept = [(r, g) for r, keep in enumerate(keeps) for g in keep.nonzero().flatten().tolist()]
    chosen = kept[:num_groups]
    if fill and len(chosen) < num_groups:
        dropped = [(r, g) for r, keep in enumerate(keeps) for g in (~keep).nonzero().flatten().tolist()]
        chosen += dropped[: num_groups - len(chosen)]
    return chosen


def row_sources(
    groups: Sequence[tuple[int, int]], num_generations: int, rows_per_process: int
) -> list[tuple[int, int, int]]:
    """
    Where each row of the training batch was generated: `(round, process, row on that process)`, in batch order.

    A round's `prompts_per_round × G` rows are split over processes in contiguous slices of `rows_per_process`, as
    TRL splits a generation batch; row `j` of the training batch then belongs to process `j // rows_per_rank` with
    `rows_per_rank = len(groups) × G / processes`, again contiguous, so a group stays whole or is cut at a process
    boundary exactly as TRL does it.
    """
    sources = []
    for round_index, group in groups:
        for row in range(group * num_generations, (group + 1) * num_generations):
            sources.append((round_index, row // rows_per_process, row % rows_per_process))
    return sources


class PromptStream:
    """
    The prompts of the extra rounds: seeded passes over the dataset, each pass a fresh permutation, so that a prompt
    comes back only after every other prompt of the dataset has been drawn once in the stream (like TRL's sampler
    over its epochs). The state is two integers, saved with each checkpoint.

    Args:
        num_prompts (`int`): rows in the training dataset.
        seed (`int`): the run's seed; pass `e` uses the permutation drawn from `(seed, e)`.
        shuffle (`bool`, *optional*, defaults to `True`): `False` (TRL's `shuffle_dataset=False`) takes every pass in
            dataset order.
        start (`int`, *optional*, defaults to `0`): row where the first pass starts. Without shuffling, the trainer
            starts after the dataloader's first generation batch, so that the first batch's rounds see the first
            prompts of the dataset once each, in order, as the official trainer does.
    """

    def __init__(self, num_prompts: int, seed: int, shuffle: bool = True, start: int = 0):
        if num_prompts < 1:
            raise ValueError("the prompt stream needs a non-empty training dataset")
        self.num_prompts, self.seed, self.shuffle = num_prompts, seed, shuffle
        self.epoch, self.position = 0, start % num_prompts
        self._order = None  # (epoch, permutation) of the current pass, drawn once

    def _permutation(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_prompts)
        if self._order is None or self._order[0] != self.epoch:
            rng = np.random.default_rng([self.seed, _STREAM_KEY, self.epoch])
            self._order = (self.epoch, rng.permutation(self.num_prompts))
        return self._order[1]

    def take(self, count: int) -> list[int]:
        """The next `count` dataset indices (moving on to the next pass when this one is used up)."""
        indices = []
        while len(indices) < count:
            chunk = self._permutation()[self.position : self.position + count - len(indices)]
            indices += chunk.tolist()
            self.position += len(chunk)
            if self.position == self.num_prompts:
                self.epoch, self.position = self.epoch + 1, 0
        return indices

    def state_dict(self) -> dict[str, int]:
        return {"num_prompts": self.num_prompts, "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["num_prompts"], state["seed"]) != (self.num_prompts, self.seed):
            raise ValueError(
                f"the saved prompt stream was over {state['num_prompts']} prompts with seed {state['seed']}, this run "
                f"has {self.num_prompts} prompts and seed {self.seed}: resume with the same dataset and seed"
            )
        self.epoch, self.position = state["epoch"], state["position"]


# TRL's `_generate` appends one value of each per call, over that call's completions (all processes gathered)
ROUND_LENGTH_METRICS = (
    "completions/mean_length",
    "completions/min_length",
    "completions/max_length",
    "completions/clipped_ratio",
    "completions/mean_terminated_length",
    "completions/min_terminated_length",
    "completions/max_terminated_length",
)


def merge_round_metrics(per_round: dict[str, Sequence[float]], completions_per_round: int) -> dict[str, float]:
    """
    TRL's completion-length metrics of several filter rounds merged into the values TRL would log for all their
    completions at once: the minimum of the minima, the maximum of the maxima, means weighted by how many
    completions each mean covers. Averaging the per-round values, as `log()` would, gives a mean of extremes.

    Args:
        per_round (`dict[str, Sequence[float]]`): for each name of `ROUND_LENGTH_METRICS`, one value per round.
        completions_per_round (`int`): completions of one round over all processes (the same for every round).

    Returns:
        `dict[str, float]`, one value per name; the terminated-length values are 0 when no completion of any round
        ended with EOS, as TRL logs them for one such batch.
    """
    clipped = per_round["completions/clipped_ratio"]
    # TRL logs the fraction of truncated completions; each round's number of terminated ones follows from it
    terminated = [round((1 - ratio) * completions_per_round) for ratio in clipped]
    merged = {
        "completions/mean_length": sum(per_round["completions/mean_length"]) / len(clipped),  # rounds of equal size
        "completions/min_length": min(per_round["completions/min_length"]),
        "completions/max_length": max(per_round["completions/max_length"]),
        "completions/clipped_ratio": sum(clipped) / len(clipped),
    }
    with_terminated = [
        (count, mean, low, high)
        for count, mean, low, high in zip(
            terminated,
            per_round["completions/mean_terminated_length"],
            per_round["completions/min_terminated_length"],
            per_round["completions/max_terminated_length"],
            strict=True,
        )
        if count > 0
    ]
    if with_terminated:
        counts, means, lows, highs = zip(*with_terminated, strict=True)
        mean = sum(count * value for count, value in zip(counts, means, strict=True)) / sum(counts)
        merged.update(
            {
                "completions/mean_terminated_length": mean,
                "completions/min_terminated_length": min(lows),
                "completions/max_terminated_length": max(highs),
            }
        )
    else:
        merged.update(dict.fromkeys(ROUND_LENGTH_METRICS[4:], 0.0))
    return merged
