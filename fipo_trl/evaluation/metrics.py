"""Avg@k, Cons@k and Pass@k of sampled answers: pure functions on Python lists, no model, no TRL (docs/fipo.md §3.4).

1. Avg@k is the mean accuracy of the k samples of a problem (the paper's "Avg@32", verl's `acc/mean@32`).
2. Cons@k scores the majority answer. Every sample votes with its normalised extracted answer, the "[INVALID]" of a
   sample without one included, as verl's `maj@32` votes on `pred`. Ties go to the tied answer that was sampled first.
   It is the exact vote over all k samples, where verl reports the mean of 1000 bootstrap resamples.
3. Pass@k' is the unbiased estimator 1 - C(n - c, k') / C(n, k') of n samples with c correct (Chen et al., 2021),
   for every k' <= n; verl's `best@32/mean` is a bootstrap estimate instead.
Each is computed per problem, then averaged over problems.
"""

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """
    Unbiased estimate of the probability that at least one of `k` samples drawn without replacement is correct.

    Args:
        num_samples (`int`):
            Number of samples `n` drawn for the problem.
        num_correct (`int`):
            Number of them that are correct, `0 <= c <= n`.
        k (`int`):
            Size of the subset, `1 <= k <= n`.

    Returns:
        `float`: `1 - C(n - c, k) / C(n, k)`, exact in integer arithmetic before the final division.
    """
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k} and n={num_samples}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={num_correct} and n={num_samples}")
    # math.comb returns 0 when k > n - c: then every k-subset holds a correct sample
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def majority_vote(answers: Sequence[str]) -> int:
    """
    Index of the sample that carries the majority answer.

    Ties are broken by order: among the answers with the highest count, the one whose first sample comes earliest
    wins, and the index of that first sample is returned. Deterministic given the sample order, like verl's vote.

    Args:
        answers (`Sequence[str]`):
            Normalised extracted answer of each sample, in sampling order.

    Returns:
        `int`: Index into `answers` of the first sample with the winning answer.
    """
    if not answers:
        raise ValueError("majority_vote needs at least one answer")
    counts = Counter(answers)
    # Counter keeps first-occurrence order and max() keeps the first of equal keys: that is the tie rule
    winner = max(counts, key=counts.__getitem__)
    return answers.index(winner)


def problem_metrics(answers: Sequence[str], correct: Sequence[bool], k: int) -> dict[str, float]:
    """
    Avg@k, Cons@k and Pass@k' (every k' <= k) of one problem's samples.

    Args:
        answers (`Sequence[str]`):
            Normalised extracted answer of each sample, in sampling order.
        correct (`Sequence[bool]`):
            Whether each sample is scored correct.
        k (`int`):
            Number of samples per problem; must equal `len(answers)`.

    Returns:
        `dict[str, float]`: `avg@k`, `cons@k` and `pass@1` ... `pass@k`, each in [0, 1].
    """
    if len(answers) != k or len(correct) != k:
        raise ValueError(f"expected {k} samples, got {len(answers)} answers and {len(correct)} scores")
    num_correct = sum(bool(c) for c in correct)
    metrics = {f"avg@{k}": num_correct / k, f"cons@{k}": float(bool(correct[majority_vote(answers)]))}
    metrics.update({f"pass@{j}": pass_at_k(k, num_correct, j) for j in range(1, k + 1)})
    return metrics


def length_metrics(num_tokens: Sequence[int], truncated: Sequence[bool]) -> dict[str, float]:
    """
    Response-length statistics over all samples, named as TRL's GRPOTrainer names them (`completions/...`).

    Args:
        num_tokens (`Sequence[int]`):
            Completion length of each sample in tokens (the EOS token included when generated).
        truncated (`Sequence[bool]`):
            Whether each sample hit the token limit without an EOS.

    Returns:
        `dict[str, float]`: mean, min, q25, median, q75 and max length (linear-interpolated quantiles, as
        `torch.quantile` in the official code) and `completions/clipped_ratio`, the fraction truncated.
    """
    if not num_tokens:
        raise ValueError("length_metrics needs at least one sample")
    lengths = np.asarray(num_tokens, dtype=np.float64)
    q25, median, q75 = np.quantile(lengths, [0.25, 0.5, 0.75])
    return {
        "completions/mean_length": float(lengths.mean()),
        "completions/min_length": float(lengths.min()),
        "completions/q25_length": float(q25),
        "completions/median_length": float(median),
        "completions/q75_length": float(q75),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": sum(bool(t) for t in truncated) / len(truncated),
    }


def aggregate_metrics(per_problem: Sequence[dict[str, float]]) -> dict[str, float]:
    """
    Mean of each per-problem metric over problems (the dataset's Avg@k, Cons@k and Pass@k').

    Args:
        per_problem (`Sequence[dict[str, float]]`):
            Output of [`problem_metrics`] for each problem; all with the same keys.

    Returns:
        `dict[str, float]`: the same keys, averaged.
    """
    if not per_problem:
        raise ValueError("aggregate_metrics needs at least one problem")
    return {key: sum(m[key] for m in per_problem) / len(per_problem) for key in per_problem[0]}
