"""Data loaders on small local parquet/jsonl/json fixtures (made-up problems; no hub access, no dataset text)."""

import json

import datasets
import pandas as pd
import pyarrow as pa
import pytest
from transformers import AutoTokenizer

from fipo_trl.data import math_datasets as data
from fipo_trl.data.math_datasets import (
    DAPO_PROMPT_TEMPLATE,
    apply_dapo_template,
    gsm8k_final_answer,
    load_aime_2024,
    load_aime_2025,
    load_dapo_math,
    load_gsm8k,
    load_math_500,
    load_math_dataset,
    truncate_prompt,
)
from fipo_trl.errors import UsageError


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow cache that `load_dataset` writes for local files inside the test's tmp_path."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def verl_rows(problems_and_answers):
    """Rows in the hub layout of DAPO-Math-17k / AIME-2024 (verl): chat prompt plus reward_model.ground_truth."""
    return [
        {
            "data_source": "math_dapo",
            "prompt": [{"content": apply_dapo_template(problem, conversational=False), "role": "user"}],
            "ability": "MATH",
            "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": f"id-{i}"},
        }
        for i, (problem, answer) in enumerate(problems_and_answers)
    ]


@pytest.fixture
def dapo_parquet(tmp_path):
    path = tmp_path / "dapo-math-17k.parquet"
    rows = [("What is 1+1?", "2"), ("What is 2+2?", "4"), ("What is 1+1?", "2"), ("What is 3+3?", "6")] * 3
    pd.DataFrame(verl_rows(rows)).to_parquet(path)
    return str(path)


def test_template_is_the_spec_prompt():
    # docs/fipo.md §3.2: instruction, blank line, problem, blank line, reminder
    expected = (
        "Solve the following math problem step by step. The last line of your response should be of the form "
        "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\nWhat is 1+1?\n\n"
        'Remember to put your answer on its own line after "Answer:".'
    )
    assert DAPO_PROMPT_TEMPLATE.format(problem="What is 1+1?") == expected


def test_template_chat_and_plain_variants():
    # chat: one user message; plain: the same text
    chat = apply_dapo_template("P", conversational=True)
    assert chat == [{"role": "user", "content": apply_dapo_template("P", conversational=False)}]


def test_dapo_math_deduplicates_in_file_order(dapo_parquet):
    # 12 rows of 3 problems -> 3 rows, first occurrences first; solution is the ground truth string
    dataset = load_dapo_math(dapo_parquet)
    assert dataset.column_names == ["prompt", "solution"]
    assert dataset["solution"] == ["2", "4", "6"]
    assert dataset[0]["prompt"] == apply_dapo_template("What is 1+1?")


def test_dapo_math_without_deduplication_keeps_every_row(dapo_parquet):
    # the official run trains on the repeated file as is
    assert len(load_dapo_math(dapo_parquet, deduplicate=False)) == 12


def test_dapo_math_plain_text_prompts(dapo_parquet):
    # conversational=False gives the message content as a string
    dataset = load_dapo_math(dapo_parquet, conversational=False)
    assert dataset[1]["prompt"] == apply_dapo_template("What is 2+2?", conversational=False)


def test_dapo_math_same_answer_different_problem_kept(tmp_path):
    # de-duplication keys on (prompt, answer), not on the answer alone
    path = tmp_path / "dapo.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in verl_rows([("A?", "1"), ("B?", "1"), ("A?", "2")])))
    assert load_dapo_math(str(path))["solution"] == ["1", "1", "2"]


def test_dapo_math_integer_ground_truth_becomes_string(tmp_path):
    # a local copy may store answers as integers; solution is always a string
    path = tmp_path / "dapo.parquet"
    pd.DataFrame(verl_rows([("A?", 34), ("B?", 7)])).to_parquet(path)
    assert load_dapo_math(str(path))["solution"] == ["34", "7"]


def test_dapo_math_missing_column_names_column_and_file(tmp_path):
    # a file without reward_model fails with both names in the message
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"prompt": [[{"content": "x", "role": "user"}]], "answer": ["1"]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"bad\.parquet.*'reward_model'"):
        load_dapo_math(str(path))


def test_dapo_math_prompt_must_be_chat(tmp_path):
    # a string prompt column is not the DAPO-Math-17k layout
    path = tmp_path / "flat.parquet"
    pd.DataFrame({"prompt": ["x"], "reward_model": [{"ground_truth": "1"}]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"flat\.parquet.*'prompt'"):
        load_dapo_math(str(path))


def test_aime_2024_verl_layout_one_row_per_problem(tmp_path):
    # the official aime-2024.parquet repeats each problem 32 times; the loader keeps one
    path = tmp_path / "aime-2024.parquet"
    pd.DataFrame(verl_rows([("P1", "10"), ("P2", "20")] * 32)).to_parquet(path)
    dataset = load_aime_2024(str(path))
    assert len(dataset) == 2 and dataset["solution"] == ["10", "20"]


def test_aime_2024_problem_answer_layout_with_custom_columns(tmp_path):
    # Maxwell-Jia style "Problem"/"Answer" columns with integer answers
    path = tmp_path / "aime.jsonl"
    pd.DataFrame({"ID": ["a", "b"], "Problem": ["P1", "P2"], "Answer": [204, 25]}).to_json(
        path, orient="records", lines=True
    )
    dataset = load_aime_2024(str(path), problem_column="Problem", answer_column="Answer")
    assert dataset["solution"] == ["204", "25"]
    assert dataset[0]["prompt"] == apply_dapo_template("P1")


def test_aime_2025_problem_answer_layout(tmp_path):
    # yentinglin/aime_2025 style: problem and answer columns
    path = tmp_path / "aime25.parquet"
    pd.DataFrame({"id": [0], "problem": ["P"], "answer": ["70"], "solution": ["worked"]}).to_parquet(path)
    dataset = load_aime_2025(str(path), conversational=False)
    assert dataset[0] == {"prompt": apply_dapo_template("P", conversational=False), "solution": "70"}


def test_aime_missing_answer_column_names_it(tmp_path):
    # misnamed columns are reported with the file name
    path = tmp_path / "aime.parquet"
    pd.DataFrame({"problem": ["P"], "final": ["1"]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"aime\.parquet.*'answer'.*\['problem', 'final'\]"):
        load_aime_2025(str(path))


def test_math_500_answer_becomes_solution(tmp_path):
    # MATH-500's worked `solution` column is replaced by its final `answer`
    path = tmp_path / "math500.jsonl"
    rows = [{"problem": "P", "solution": "a long derivation", "answer": "\\frac{1}{2}", "level": 3}]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    assert load_math_500(str(path))["solution"] == ["\\frac{1}{2}"]


def test_gsm8k_answer_after_hashes(tmp_path):
    # the number after "####", thousands separators removed
    path = tmp_path / "gsm8k.parquet"
    pd.DataFrame({"question": ["Q1", "Q2"], "answer": ["3 + 4 = 7\n#### 7", "big\n#### 1,234"]}).to_parquet(path)
    dataset = load_gsm8k(str(path))
    assert dataset["solution"] == ["7", "1234"]
    assert dataset[0]["prompt"] == apply_dapo_template("Q1")


def test_gsm8k_final_answer():
    # only the text after the last "####" counts
    assert gsm8k_final_answer("a #### b\n#### 12 ") == "12"


def test_generic_loader_json_array_and_custom_columns(tmp_path):
    # a .json array with question/final columns; template "{problem}" keeps the bare problem
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([{"question": "Q", "final": 3.0}, {"question": "R", "final": 0.5}]))
    dataset = load_math_dataset(str(path), problem_column="question", answer_column="final", template="{problem}")
    assert dataset["prompt"] == [[{"role": "user", "content": "Q"}], [{"role": "user", "content": "R"}]]
    assert dataset["solution"] == ["3", "0.5"]


def test_generic_loader_missing_problem_column(tmp_path):
    # the default "problem" column is missing: the error names it and the file
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "Q", "answer": "1"}))
    with pytest.raises(ValueError, match=r"mine\.jsonl.*'problem'"):
        load_math_dataset(str(path))


def test_unsupported_file_type(tmp_path):
    # only parquet, jsonl and json files are read
    path = tmp_path / "mine.csv"
    path.write_text("problem,answer\nP,1\n")
    with pytest.raises(ValueError, match=r"mine\.csv.*'\.csv'"):
        load_math_dataset(str(path))


def test_hub_ids_go_to_load_dataset(monkeypatch):
    # a name that is not a local path is passed to datasets.load_dataset with its config and split
    calls = []
    rows = datasets.Dataset.from_dict({"question": ["Q"], "answer": ["#### 5"]})
    monkeypatch.setattr(data, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or rows)
    assert load_gsm8k()["solution"] == ["5"]
    assert calls == [(("openai/gsm8k",), {"name": "main", "split": "test"})]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_truncation_keeps_the_end_of_a_chat_prompt(tokenizer):
    # a long problem is cut from the left so the templated prompt fits, and the answer instruction survives
    prompt = apply_dapo_template("one two three " * 200)
    truncated = truncate_prompt(prompt, tokenizer, max_prompt_length=64)
    rendered = tokenizer.apply_chat_template(truncated, tokenize=False, add_generation_prompt=True)
    assert len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) <= 64
    assert truncated[0]["role"] == "user" and truncated[0]["content"].endswith('after "Answer:".')
    assert len(truncated[0]["content"]) < len(prompt[0]["content"])


def test_truncation_of_plain_text_and_short_prompts(tokenizer):
    # plain text is cut to the budget; a prompt that fits is returned unchanged
    text = apply_dapo_template("one two three " * 200, conversational=False)
    truncated = truncate_prompt(text, tokenizer, max_prompt_length=32)
    assert len(tokenizer(truncated, add_special_tokens=False)["input_ids"]) <= 32 and text.endswith(truncated)
    short = apply_dapo_template("1+1?")
    assert truncate_prompt(short, tokenizer, max_prompt_length=2048) == short


def test_loader_truncates_when_given_a_tokenizer(dapo_parquet, tokenizer):
    # the loaders apply the same left truncation to every row: each prompt is longer than the budget before, fits
    # it after, and keeps its end (the answer instruction)
    def length(prompt):
        rendered = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])

    full = load_dapo_math(dapo_parquet)
    truncated = load_dapo_math(dapo_parquet, tokenizer=tokenizer, max_prompt_length=40)
    assert len(full) == len(truncated) == 3
    for before, after in zip(full["prompt"], truncated["prompt"], strict=True):
        assert length(before) > 40 >= length(after)
        assert before[0]["content"].endswith(after[0]["content"]) and after[0]["content"].endswith('"Answer:".')


def test_dapo_math_reward_model_without_ground_truth(tmp_path):
    # the ground truth must sit in reward_model.ground_truth
    path = tmp_path / "nogt.parquet"
    pd.DataFrame({"prompt": [[{"content": "x", "role": "user"}]], "reward_model": [{"answer": "1"}]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"nogt\.parquet.*'ground_truth'"):
        load_dapo_math(str(path))


def test_deduplication_across_arrow_chunks():
    # the hub file arrives in many Arrow chunks (one sliced): duplicates in different chunks still collapse
    table = pa.Table.from_pylist(verl_rows([("A?", "1"), ("B?", "2"), ("A?", "1"), ("C?", "3"), ("B?", "2")]))
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 1), table.slice(3)])
    dataset = data._from_verl_layout(datasets.Dataset(chunked), "chunks", conversational=False, deduplicate=True)
    assert dataset["prompt"] == [apply_dapo_template(p, conversational=False) for p in ["A?", "B?", "C?"]]


# --- the datasets of a recipe (get_dataset) ----------------------------------------------------------------------


def recipe_args(**fields):
    from fipo_trl.cli.recipe import FIPOScriptArguments

    return FIPOScriptArguments(**fields)


def additions_file(tmp_path, num_rows, **changes):
    path = tmp_path / "additions.jsonl"
    rows = [{"prompt": f"{i}+1=?\n", "solution": str(i + 1), **changes} for i in range(num_rows)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_heldout_size_with_a_single_file_holds_rows_out_and_says_so(tmp_path, caplog):
    path = additions_file(tmp_path, 20)
    train, heldout = data.get_dataset(recipe_args(dataset_name=str(path), heldout_size=5))
    assert len(heldout) == 5 and len(train) == 15
    assert not set(train["prompt"]) & set(heldout["prompt"])  # never trained on
    assert "5 of the 20 rows of" in caplog.text and "not trained on" in caplog.text
    # the same rows on every run (and on every process of one)
    again, _ = data.get_dataset(recipe_args(dataset_name=str(path), heldout_size=5))
    assert again["prompt"] == train["prompt"]


def test_list_solutions_are_refused_with_the_row(tmp_path):
    # a list would reach the rewards as its repr ("['1']"), match no answer and train at reward -1 throughout
    path = tmp_path / "lists.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=?", "solution": [str(i + 1)]}) + "\n" for i in range(4)))
    with pytest.raises(UsageError, match=r"lists\.jsonl, row 1: solution is a list \(\['1'\]\); write one answer"):
        data.get_dataset(recipe_args(dataset_name=str(path)))


def test_one_answer_as_text_for_data_and_rewards():
    # the loaders and the rewards share one conversion: parquet integer columns with gaps arrive as floats
    from fipo_trl.text import solution_text

    assert data.solution_text is solution_text
    assert [solution_text(value) for value in (3.0, 2.5, 7, "x")] == ["3", "2.5", "7", "x"]


def test_too_few_prompts_for_one_generation_batch_are_refused(tmp_path):
    from types import SimpleNamespace

    path = additions_file(tmp_path, 7)
    args = SimpleNamespace(generation_batch_size=32, num_generations=4)  # 8 prompts per generation batch
    train, _ = data.get_dataset(recipe_args(dataset_name=str(path)))
    with pytest.raises(UsageError, match="has 7 training prompts, fewer than one generation batch of 8"):
        data.check_enough_prompts(train, args, str(path))
    train, _ = data.get_dataset(recipe_args(dataset_name=str(additions_file(tmp_path, 8))))
    data.check_enough_prompts(train, args, str(path))
