"""Tests for `fipo-trl eval`: exact Avg@k / Cons@k / Pass@k on hand-made samples, then the transformers backend."""

import math

import pytest

from fipo_trl.eval_metrics import aggregate_metrics, length_metrics, majority_vote, pass_at_k, problem_metrics


# --- pure metrics (spec §3.5) ---------------------------------------------------------------------------------------


def test_pass_at_k_matches_the_combinatorial_definition():
    # n=5, c=2: 1 - C(3,k)/C(5,k) = 1 - 3/5, 1 - 3/10, 1 - 1/10, 1 - 0, 1 - 0
    assert [pass_at_k(5, 2, k) for k in range(1, 6)] == pytest.approx([0.4, 0.7, 0.9, 1.0, 1.0])
    assert pass_at_k(32, 1, 32) == 1.0 and pass_at_k(32, 0, 32) == 0.0
    assert pass_at_k(32, 3, 8) == pytest.approx(1 - math.comb(29, 8) / math.comb(32, 8))


def test_pass_at_k_rejects_k_outside_one_to_n():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 0)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_majority_vote_tie_goes_to_the_answer_sampled_first():
    # "7" and "3" both have two votes; "7" appeared first (index 1)
    assert majority_vote(["[INVALID]", "7", "3", "3", "7"]) == 1
    assert majority_vote(["3", "7", "7", "3"]) == 0
    # a strict majority wins regardless of order
    assert majority_vote(["1", "2", "2"]) == 1


def test_invalid_answers_vote_like_any_other():
    # three samples with no "Answer:" line outvote two correct ones, as verl's maj@ on `pred` does
    metrics = problem_metrics(["[INVALID]", "5", "[INVALID]", "5", "[INVALID]"], [False, True, False, True, False], 5)
    assert metrics["cons@5"] == 0.0 and metrics["avg@5"] == pytest.approx(0.4)


def test_problem_metrics_tie_all_correct_all_wrong():
    # a 2-2 tie between a correct and a wrong answer: the correct one was sampled first
    tie = problem_metrics(["42", "41", "41", "42"], [True, False, False, True], 4)
    assert tie == pytest.approx(
        {"avg@4": 0.5, "cons@4": 1.0, "pass@1": 0.5, "pass@2": 5 / 6, "pass@3": 1.0, "pass@4": 1.0}
    )
    # the same samples in the other order: now the wrong answer wins the tie
    assert problem_metrics(["41", "42", "42", "41"], [False, True, True, False], 4)["cons@4"] == 0.0
    assert problem_metrics(["1"] * 3, [True] * 3, 3) == {
        "avg@3": 1.0,
        "cons@3": 1.0,
        "pass@1": 1.0,
        "pass@2": 1.0,
        "pass@3": 1.0,
    }
    assert problem_metrics(["2", "3", "2"], [False] * 3, 3) == {
        "avg@3": 0.0,
        "cons@3": 0.0,
        "pass@1": 0.0,
        "pass@2": 0.0,
        "pass@3": 0.0,
    }


def test_k_equals_one_makes_all_three_metrics_the_accuracy():
    assert problem_metrics(["9"], [True], 1) == {"avg@1": 1.0, "cons@1": 1.0, "pass@1": 1.0}
    assert problem_metrics(["8"], [False], 1) == {"avg@1": 0.0, "cons@1": 0.0, "pass@1": 0.0}


def test_problem_metrics_rejects_a_wrong_sample_count():
    with pytest.raises(ValueError, match="expected 3 samples"):
        problem_metrics(["1", "2"], [True, False], 3)


def test_aggregate_is_the_mean_over_problems():
    per_problem = [problem_metrics(["1", "1"], [True, True], 2), problem_metrics(["1", "2"], [False, True], 2)]
    assert aggregate_metrics(per_problem) == pytest.approx(
        {"avg@2": 0.75, "cons@2": 0.5, "pass@1": 0.75, "pass@2": 1.0}
    )


def test_length_metrics_quantiles_and_clipped_ratio():
    metrics = length_metrics([1, 2, 3, 4, 10], [False, False, False, False, True])
    assert metrics == pytest.approx(
        {
            "completions/mean_length": 4.0,
            "completions/min_length": 1.0,
            "completions/q25_length": 2.0,
            "completions/median_length": 3.0,
            "completions/q75_length": 4.0,
            "completions/max_length": 10.0,
            "completions/clipped_ratio": 0.2,
        }
    )
