"""Tests for `fipo-trl eval`: exact Avg@k / Cons@k / Pass@k on hand-made samples, then the transformers backend."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
from transformers.integrations.integration_utils import rewrite_logs

from fipo_trl.callbacks import MathEvalCallback
from fipo_trl.cli import main as cli_main
from fipo_trl.data.math_datasets import apply_dapo_template
from fipo_trl.evaluation.datasets import load_eval_dataset
from fipo_trl.evaluation.generation import Sampling, generate_with_transformers, tokenize_prompts
from fipo_trl.evaluation.heldout import heldout_check
from fipo_trl.evaluation.metrics import aggregate_metrics, length_metrics, majority_vote, pass_at_k, problem_metrics
from fipo_trl.evaluation.scoring import score_completions, summarize
from fipo_trl.model_loading import load_model_and_tokenizer, resolve_model_path
from fipo_trl.rewards import dapo_accuracy_reward


def main(argv):
    """`fipo-trl eval ARGV` as the console script runs it (errors reported by `fipo_trl.cli`)."""
    return cli_main(["eval", *argv])


# --- pure metrics (docs/fipo.md §3.4) --------------------------------------------------------------------------------


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


# --- scoring: the training rewards decide what is correct ----------------------------------------------------------


def completions_of(*texts):
    return [{"completion": text, "num_tokens": 3, "truncated": False} for text in texts]


def test_dapo_scoring_votes_on_normalised_answer_lines():
    dataset = Dataset.from_dict(
        {"prompt": [apply_dapo_template("6*7?"), apply_dapo_template("1+1?")], "solution": ["42", "2"]}
    )
    completions = [
        completions_of("so\nAnswer: 42", "Answer: $42$", "Answer: 41", "no answer line"),
        completions_of("Answer: 3", "Answer: 3", "Answer: 2", "Answer: 2"),
    ]
    first, second = score_completions(dataset, completions, "dapo")
    assert [s["answer"] for s in first["samples"]] == ["42", "42", "41", "[INVALID]"]
    assert [s["reward"] for s in first["samples"]] == [1.0, 1.0, -1.0, -1.0]
    assert first["majority_answer"] == "42" and first["metrics"]["cons@4"] == 1.0 and first["metrics"]["avg@4"] == 0.5
    # a 2-2 tie: the wrong "3" was sampled first and wins
    assert second["majority_answer"] == "3" and second["metrics"]["cons@4"] == 0.0 and second["num_correct"] == 2
    assert summarize([first, second])["pass@1"] == 0.5


def test_boxed_scoring_uses_math_verify_equivalence():
    dataset = Dataset.from_dict({"prompt": ["half?"], "solution": ["0.5"]})
    texts = [r"it is \boxed{\frac{1}{2}}", r"\boxed{1/2}", r"\boxed{2}", r"so \boxed{ 2 }", "Answer: 0.5"]
    (record,) = score_completions(dataset, [completions_of(*texts)], "boxed")
    assert [s["correct"] for s in record["samples"]] == [True, True, False, False, False]
    # answers are normalised before the vote: "2" and " 2 " are one answer, which outvotes the two correct forms
    assert [s["answer"] for s in record["samples"]] == [r"\frac{1}{2}", "1/2", "2", "2", "[INVALID]"]
    assert record["metrics"]["avg@5"] == 0.4 and record["metrics"]["cons@5"] == 0.0


# --- generation (transformers backend, tiny offline model) ----------------------------------------------------------


CHAT_PROMPTS = [[{"role": "user", "content": "1+1="}], [{"role": "user", "content": "2+3="}]]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model_and_tokenizer(tiny_model_dir)


def test_generation_counts_tokens_flags_truncation_and_is_seeded(tiny_model):
    model, tokenizer = tiny_model
    prompt_ids = tokenize_prompts(CHAT_PROMPTS, tokenizer)
    sampling = Sampling(k=3, temperature=1.0, top_p=0.7, max_tokens=5, seed=0)
    completions = generate_with_transformers(model, tokenizer, prompt_ids, sampling, 4, show_progress=False)
    assert [len(samples) for samples in completions] == [3, 3]
    for sample in (s for samples in completions for s in samples):
        # without an EOS a completion runs to max_tokens and is flagged truncated
        assert sample["num_tokens"] == 5 if sample["truncated"] else 1 <= sample["num_tokens"] <= 5
    assert generate_with_transformers(model, tokenizer, prompt_ids, sampling, 4, show_progress=False) == completions


def test_left_padding_does_not_change_greedy_completions(tiny_model):
    model, tokenizer = tiny_model
    prompts = [[{"role": "user", "content": "1+1="}], [{"role": "user", "content": "What is 12 + 30? Let us add."}]]
    prompt_ids = tokenize_prompts(prompts, tokenizer)
    assert len(prompt_ids[0]) < len(prompt_ids[1])
    # a tiny top_p is greedy: one prompt per batch and both prompts in one padded batch must agree
    sampling = Sampling(k=1, temperature=1.0, top_p=1e-6, max_tokens=6, seed=0)
    alone = generate_with_transformers(model, tokenizer, prompt_ids, sampling, batch_size=1, show_progress=False)
    assert generate_with_transformers(model, tokenizer, prompt_ids, sampling, 2, show_progress=False) == alone


def test_generation_stops_at_eos_and_counts_it(tiny_model):
    model, tokenizer = tiny_model
    prompt_ids = tokenize_prompts(CHAT_PROMPTS[:1], tokenizer)
    with torch.no_grad():
        first = int(model(torch.tensor(prompt_ids)).logits[0, -1].argmax())
    # make the most likely first token an EOS: with a tiny top_p every sample is that one token
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [original, first]
    try:
        sampling = Sampling(k=2, temperature=1.0, top_p=1e-6, max_tokens=5, seed=0)
        completions = generate_with_transformers(model, tokenizer, prompt_ids, sampling, batch_size=2)
    finally:
        model.generation_config.eos_token_id = original
    expected = {"completion": tokenizer.decode([first], skip_special_tokens=True), "num_tokens": 1, "truncated": False}
    assert completions == [[expected, expected]]


def test_lora_checkpoint_loads_merged_and_generates(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model  # imported here: the 2-process worker below does not need it

    # a training output directory whose last checkpoint is a LoRA adapter (non-zero B) saved without a tokenizer
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_q_proj = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-1").mkdir()
    model_path = resolve_model_path(str(tmp_path))
    assert model_path == str(tmp_path / "checkpoint-2")
    model, tokenizer = load_model_and_tokenizer(model_path)
    # merged into a plain Qwen2: the adapter changed q_proj, and the tokenizer came from the base model
    assert type(model).__name__ == "Qwen2ForCausalLM" and tokenizer.pad_token == "<|pad|>"
    assert not torch.allclose(model.model.layers[0].self_attn.q_proj.weight, base_q_proj)
    completions = generate_with_transformers(
        model,
        tokenizer,
        tokenize_prompts(CHAT_PROMPTS, tokenizer),
        Sampling(k=2, temperature=1.0, top_p=0.7, max_tokens=3, seed=0),
        batch_size=4,
        show_progress=False,
    )
    assert [len(samples) for samples in completions] == [2, 2]


# --- the CLI end to end ---------------------------------------------------------------------------------------------


@pytest.fixture
def problem_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in [("1+1?", 2), ("2+3?", 5)]))
    return path


def test_cli_writes_samples_summary_and_table(tiny_model_dir, problem_file, tmp_path, capsys):
    args = ["--model_name_or_path", tiny_model_dir, "--dataset", str(problem_file), "--k", "3", "--max_tokens", "4"]
    assert main([*args, "--batch_size", "4", "--output_dir", str(tmp_path / "out")]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "problems.samples.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "out" / "problems.summary.json").read_text())
    assert [r["solution"] for r in records] == ["2", "5"] and all(len(r["samples"]) == 3 for r in records)
    # the prompts are the DAPO template, as a chat message
    assert records[0]["prompt"] == apply_dapo_template("1+1?")
    assert summary["k"] == 3 and summary["top_p"] == 0.7 and summary["backend"] == "transformers"
    # the summary is the metrics of the samples on file
    assert summary["metrics"] == pytest.approx(summarize(records))
    assert all(
        s["num_tokens"] <= 4 and s["truncated"] == (s["num_tokens"] == 4) for r in records for s in r["samples"]
    )
    out = capsys.readouterr().out
    assert "problems: 2 problems x 3 samples" in out and "avg@3" in out and "pass@2" in out and "cons@3" in out


SHIPPED_MODEL = "fipo_trl/assets/tiny-qwen2-addition"  # no chat template: it was trained on plain-text prompts


def test_plain_text_prompts_are_used_as_written(tiny_model_dir, tmp_path):
    # a file with prompt/solution columns keeps its plain-text prompts (no template, no chat message)
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "solution": a}) + "\n" for p, a in [("1+1=?\n", "2")] * 2))
    out = tmp_path / "out"
    args = ["--model_name_or_path", tiny_model_dir, "--dataset", str(path), "--k", "2", "--max_tokens", "3"]
    assert main([*args, "--output_dir", str(out)]) == 0
    records = [json.loads(line) for line in (out / "sums.samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["1+1=?\n", "1+1=?\n"]


def test_synthetic_is_the_quickstart_heldout_set_in_plain_text():
    dataset, name = load_eval_dataset("synthetic")
    assert name == "synthetic" and len(dataset) == 256
    assert isinstance(dataset[0]["prompt"], str) and dataset[0]["prompt"].endswith("=?\n")


def test_chat_prompts_for_a_model_without_chat_template_name_the_fix(problem_file, capsys):
    # the benchmark-style file gets chat prompts; the shipped model has no chat template to render them
    err = one_line_error(capsys, ["--model_name_or_path", SHIPPED_MODEL, "--dataset", str(problem_file)])
    assert "no chat template" in err and "--dataset synthetic" in err


def test_heldout_check_reports_accuracy_and_mean_length(tiny_model):
    model, tokenizer = tiny_model
    dataset = Dataset.from_dict({"prompt": ["1+1=?\n", "Answer: 2", "What is"], "solution": ["2", "2", "7"]})
    result = heldout_check(model, tokenizer, dataset, dapo_accuracy_reward, max_new_tokens=5, seed=3)
    # the same samples drawn directly: one per row, T=1, no top-p, seed 3
    prompt_ids = tokenize_prompts(dataset["prompt"], tokenizer)
    samples = generate_with_transformers(model, tokenizer, prompt_ids, Sampling(max_tokens=5, seed=3), 64, False)
    lengths = [completions[0]["num_tokens"] for completions in samples]
    rewards = dapo_accuracy_reward([c[0]["completion"] for c in samples], solution=dataset["solution"])
    assert result == {"accuracy": sum(r > 0 for r in rewards) / 3, "mean_length": sum(lengths) / 3}
    assert 1 <= result["mean_length"] <= 5 and model.training is False


def test_boxed_format_asks_for_boxed_answers(problem_file):
    dataset, name = load_eval_dataset(str(problem_file), "boxed")
    assert name == "problems" and dataset["solution"] == ["2", "5"]
    assert dataset[0]["prompt"] == [
        {"role": "user", "content": "1+1?\n\nPlease reason step by step, and put your final answer within \\boxed{}."}
    ]


# --- during training -----------------------------------------------------------------------------------------------


def test_callback_evaluates_every_n_steps_and_logs_through_the_trainer(tiny_model_dir, tmp_path):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    train = Dataset.from_dict({"input_ids": [[5, 6, 7, 8]] * 4, "labels": [[5, 6, 7, 8]] * 4})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        report_to=[],
        logging_steps=100,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    problems = Dataset.from_dict(
        {"prompt": [apply_dapo_template("1+1?"), apply_dapo_template("2+3?")], "solution": ["2", "5"]}
    )
    callback = MathEvalCallback(trainer, {"tiny": problems}, eval_steps=2, k=2, max_tokens=3, batch_size=4)
    trainer.add_callback(callback)
    trainer.train()
    evals = [logs for logs in trainer.state.log_history if "eval_tiny/avg@2" in logs]
    # step 2 only (3 is not a multiple of 2); every metric of the CLI summary is logged
    assert [logs["step"] for logs in evals] == [2]
    expected = {"avg@2", "cons@2", "pass@1", "pass@2", "completions/mean_length", "completions/clipped_ratio"}
    assert expected <= {key.removeprefix("eval_tiny/") for key in evals[0]}
    # the integrations (wandb, tensorboard) rewrite the "eval_" prefix: eval/<dataset>/avg@k
    assert "eval/tiny/avg@2" in rewrite_logs(evals[0])
    assert evals[0]["eval_tiny/completions/max_length"] <= 3


# --- the CLI: bad inputs give one line naming the problem -----------------------------------------------------------


def one_line_error(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fipo-trl eval: error: ")
    return err


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        (["--k", "0"], "k: 0 must be >= 1"),
        (["--top_p", "0"], "top_p: 0.0 must be in (0, 1]"),
        (["--batch_size", "0"], "batch_size: 0 must be >= 1"),
        (["--answer_format", "latex"], "invalid choice: 'latex'"),
    ],
)
def test_cli_rejects_bad_sampling_arguments(tiny_model_dir, capsys, extra_args, message):
    assert message in one_line_error(capsys, ["--model_name_or_path", tiny_model_dir, *extra_args])


FOLDER_OR_HUB_ID = "model_name_or_path takes a model folder or a Hub id"


def test_cli_rejects_a_missing_model_path(tmp_path, capsys):
    assert cli_main(["eval", "--model_name_or_path", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"fipo-trl eval: error: no such model directory: {tmp_path / 'nope'} ({FOLDER_OR_HUB_ID})\n"


def test_cli_rejects_a_file_whose_solutions_are_lists(tiny_model_dir, tmp_path, capsys):
    # a list would be scored as its repr and match nothing: every sample wrong, reported as the model's accuracy
    path = tmp_path / "lists.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=?\n", "solution": ["2", "2.0"]}) + "\n")
    err = one_line_error(capsys, ["--model_name_or_path", tiny_model_dir, "--dataset", str(path)])
    assert "dataset 'lists', row 1: solution is a list (['2', '2.0']); write one answer per row" in err


def test_cli_rejects_a_file_without_an_answer_column(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "no_answer.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "solution": "2"}) + "\n")
    err = one_line_error(capsys, ["--model_name_or_path", tiny_model_dir, "--dataset", str(path)])
    assert "no column 'answer'" in err


@pytest.mark.parametrize("rows", [None, []])
def test_cli_rejects_an_empty_dataset(tiny_model_dir, tmp_path, capsys, rows):
    # an empty file, and a parquet file with the right columns and no rows
    if rows is None:
        path = tmp_path / "empty.jsonl"
        path.write_text("")
    else:
        path = tmp_path / "empty.parquet"
        Dataset.from_dict({"problem": [], "answer": []}).to_parquet(path)
    err = one_line_error(capsys, ["--model_name_or_path", tiny_model_dir, "--dataset", str(path)])
    assert "dataset 'empty' is empty" in err


def test_cli_rejects_an_unknown_dataset_name(tiny_model_dir, capsys):
    err = one_line_error(capsys, ["--model_name_or_path", tiny_model_dir, "--dataset", "aime2023"])
    assert "unknown dataset 'aime2023'" in err


# --- the callback in 2 processes (DDP over gloo): padded shares, no deadlock, the same logs on both ranks ------------


def callback_worker(model_dir, out_dir):
    """One process: 2 training steps with `MathEvalCallback` at step 2 on 3 problems (padded to 2 + 2)."""
    import fipo_trl.callbacks

    summarized = []
    summarize_all = fipo_trl.callbacks.summarize
    fipo_trl.callbacks.summarize = lambda records: summarized.append(len(records)) or summarize_all(records)
    model, tokenizer = load_model_and_tokenizer(model_dir)
    train = Dataset.from_dict({"input_ids": [[5, 6, 7, 8]] * 8, "labels": [[5, 6, 7, 8]] * 8})
    args = TrainingArguments(
        output_dir=out_dir,
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        logging_steps=100,
        save_strategy="no",
        dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    problems = Dataset.from_dict(
        {"prompt": [apply_dapo_template(f"{i}+{i}?") for i in range(3)], "solution": ["0", "2", "4"]}
    )
    trainer.add_callback(MathEvalCallback(trainer, {"tiny": problems}, eval_steps=2, k=2, max_tokens=3, batch_size=2))
    trainer.train()
    evals = [logs for logs in trainer.state.log_history if "eval_tiny/avg@2" in logs]
    # the held-out check of `fipo-trl train` on the same 3 problems, one `generate` call per row
    calls, generate = [], type(model).generate
    type(model).generate = lambda self, *args, **kwargs: calls.append(1) or generate(self, *args, **kwargs)
    heldout = heldout_check(
        trainer.model_wrapped, tokenizer, problems, dapo_accuracy_reward, trainer.accelerator, 3, batch_size=1
    )
    result = {
        "num_processes": trainer.accelerator.num_processes,
        "summarized": summarized,
        "evals": evals,
        "heldout": heldout,
        "heldout_generate_calls": len(calls),
    }
    # a gloo group still alive at interpreter exit can abort the process (SIGABRT, "terminate called without an
    # active exception") while its worker threads release tensors: end it, as a script must
    trainer.end()
    result["process_group_ended"] = not torch.distributed.is_initialized()
    (Path(out_dir) / f"rank{trainer.accelerator.process_index}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_callback_under_two_processes_gathers_every_problem_once(tiny_model_dir, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    command += ["--master_port", str(port), __file__, tiny_model_dir, str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    # 3 problems: one process generated a padded duplicate, dropped after the gather
    assert rank0["num_processes"] == 2 and rank0["summarized"] == rank1["summarized"] == [3]
    assert len(rank0["evals"]) == 1 and rank0["evals"] == rank1["evals"]
    # the held-out check shares the callback's padded shares: as many `generate` calls on each process (ZeRO-3
    # gathers weights in each), the padded duplicate counted once, the same result on both
    assert rank0["heldout_generate_calls"] == rank1["heldout_generate_calls"] == 2
    assert rank0["heldout"] == rank1["heldout"] and 1 <= rank0["heldout"]["mean_length"] <= 3
    assert rank0["process_group_ended"] and rank1["process_group_ended"]


if __name__ == "__main__":
    callback_worker(sys.argv[1], sys.argv[2])
    # the results are written: leave without interpreter teardown, where the gloo group that DDP's wrapper still holds
    # is destroyed in arbitrary order and can abort the process (SIGABRT, "terminate called without an active
    # exception"; seen in a CI run after both ranks had written their results)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
