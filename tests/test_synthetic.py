"""The synthetic generator: seeded, exact answers, held-out set disjoint from training."""

import re

import pytest

from fipo_trl.data.synthetic import format_answer, generate_problems, synthetic_dataset, train_and_heldout
from fipo_trl.rewards import dapo_accuracy_reward


def test_same_seed_same_rows_other_seed_other_rows():
    assert generate_problems(50, seed=3) == generate_problems(50, seed=3)
    assert generate_problems(50, seed=3) != generate_problems(50, seed=4)


def test_addition_answers_are_exact():
    for row in generate_problems(200, seed=1, digits=3):
        a, b = map(int, re.fullmatch(r"(\d{3})\+(\d{3})=\?\n", row["prompt"]).groups())
        assert row["solution"] == str(a + b)


def test_linear_answers_solve_the_equation():
    for row in generate_problems(200, seed=1, task="linear"):
        a, b, c = map(int, re.fullmatch(r"(\d)x\+(\d+)=(\d+), x=\?\n", row["prompt"]).groups())
        assert a * int(row["solution"]) + b == c


def test_prompts_are_distinct_and_heldout_is_disjoint():
    train, heldout = train_and_heldout(3000, 500, seed=0)
    assert len(set(train["prompt"])) == 3000 and len(set(heldout["prompt"])) == 500
    assert not set(train["prompt"]) & set(heldout["prompt"])


def test_perfect_completion_scores_plus_one_with_the_dapo_scorer():
    dataset = synthetic_dataset(20, seed=5)
    completions = [format_answer(solution) for solution in dataset["solution"]]
    assert dapo_accuracy_reward(completions, dataset["solution"]) == [1.0] * 20
    assert dapo_accuracy_reward([format_answer(int(dataset["solution"][0]) + 1)], dataset["solution"][:1]) == [-1.0]


def test_bad_requests_fail_loudly():
    with pytest.raises(ValueError, match="Unknown synthetic task"):
        generate_problems(1, task="calculus")
    with pytest.raises(ValueError, match="distinct"):
        generate_problems(100, digits=1)  # only 9 × 9 one-digit additions exist
