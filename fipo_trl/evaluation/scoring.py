"""
Scores of sampled completions on math problems: Avg@k, Cons@k and Pass@k measured the way the paper reports AIME.

[`score_completions`] scores each sample with the training rewards (`dapo_accuracy_reward` on the "Answer:" line, as
the official validation does, or `math_verify_reward` on `\\boxed{}`), [`summarize`] aggregates them with
[`fipo_trl.evaluation.metrics`], [`write_results`] and [`format_table`] write the per-problem JSONL, the summary JSON
and the console table. Problems come from [`fipo_trl.evaluation.datasets`], samples from
[`fipo_trl.evaluation.generation`]; `fipo-trl eval` ([`fipo_trl.cli.eval`]) runs them in that order.
"""

import json
from pathlib import Path

from datasets import Dataset

from .metrics import aggregate_metrics, length_metrics, majority_vote, problem_metrics


# --- scoring --------------------------------------------------------------------------------------------------------


def score_completions(
    dataset: Dataset, completions: list[list[dict]], answer_format: str, indices: list[int] | None = None
) -> list[dict]:
    """
    Score every sample with the training reward of `answer_format` and compute each problem's metrics.

    Args:
        dataset ([`~datasets.Dataset`]):
            Rows with `prompt` and `solution`, aligned with `completions`.
        completions (`list[list[dict]]`):
            Output of a `generate_with_*` function.
        answer_format (`str`):
            `"dapo"` (`dapo_accuracy_reward`, `extract_dapo_answer`) or `"boxed"` (`math_verify_reward`, the
            normalised content of the last `\\boxed{}`).
        indices (`list[int]`, *optional*):
            Row index of each problem in the full dataset; defaults to `0 ... len(dataset) - 1`.

    Returns:
        `list[dict]`: one record per problem: `index`, `prompt`, `solution`, `majority_answer`, `num_correct`,
        `metrics` (from [`~fipo_trl.evaluation.metrics.problem_metrics`]) and `samples` (completion, extracted answer,
        reward, correct, num_tokens, truncated).
    """
    from ..rewards import (
        INVALID_ANSWER,
        dapo_accuracy_reward,
        extract_boxed_answer,
        extract_dapo_answer,
        math_verify_reward,
        normalize_final_answer,
    )

    indices = list(range(len(dataset))) if indices is None else indices
    texts = [sample["completion"] for samples in completions for sample in samples]
    solutions = [row["solution"] for row, samples in zip(dataset, completions, strict=True) for _ in samples]
    # the completion shape of training: chat prompts get chat completions
    conversational = isinstance(dataset[0]["prompt"], list)
    reward_inputs = [[{"role": "assistant", "content": text}] for text in texts] if conversational else texts
    if answer_format == "dapo":
        rewards = dapo_accuracy_reward(reward_inputs, solution=solutions)
        answers = [extract_dapo_answer(text) for text in texts]
    else:
        rewards = math_verify_reward(reward_inputs, solution=solutions)
        boxed = [extract_boxed_answer(text) for text in texts]
        answers = [INVALID_ANSWER if b is None else normalize_final_answer(b) for b in boxed]
    # dapo scores -1/+1 and math-verify 0/1 (None for an unparseable solution): correct means a positive reward
    correct = [reward is not None and reward > 0 for reward in rewards]
    records, start = [], 0
    for index, row, samples in zip(indices, dataset, completions, strict=True):
        span = slice(start, start + len(samples))
        start = span.stop
        records.append(problem_record(index, row, samples, answers[span], rewards[span], correct[span]))
    return records


def problem_record(index, row, samples, answers, rewards, correct) -> dict:
    """One problem's record of [`score_completions`]: its metrics and each sample with its answer and score."""
    return {
        "index": index,
        "prompt": row["prompt"],
        "solution": row["solution"],
        "majority_answer": answers[majority_vote(answers)],
        "num_correct": sum(correct),
        "metrics": problem_metrics(answers, correct, len(samples)),
        "samples": [
            {**sample, "answer": answer, "reward": reward, "correct": ok}
            for sample, answer, reward, ok in zip(samples, answers, rewards, correct, strict=True)
        ],
    }


def summarize(records: list[dict]) -> dict[str, float]:
    """Dataset metrics: Avg@k, Cons@k and Pass@1..k averaged over problems, and length statistics over samples."""
    samples = [sample for record in records for sample in record["samples"]]
    return {
        **aggregate_metrics([record["metrics"] for record in records]),
        **length_metrics([s["num_tokens"] for s in samples], [s["truncated"] for s in samples]),
    }


# --- outputs --------------------------------------------------------------------------------------------------------


def format_table(summary: dict[str, float], k: int, title: str) -> str:
    """
    The one-screen console table: accuracies in percent (Pass@k' at powers of two and at k), lengths in tokens.

    Args:
        summary (`dict[str, float]`):
            Output of [`summarize`].
        k (`int`):
            Samples per problem.
        title (`str`):
            First line of the table.

    Returns:
        `str`: the table, one metric per line.
    """
    shown_k = sorted({2**p for p in range(k.bit_length())} | {k})
    rows = [(f"avg@{k}", summary[f"avg@{k}"]), (f"cons@{k}", summary[f"cons@{k}"])]
    rows += [(f"pass@{j}", summary[f"pass@{j}"]) for j in shown_k]
    lines = [title, f"  {'metric':<28}{'value':>10}"]
    lines += [f"  {name:<28}{100 * value:>9.2f}%" for name, value in rows]
    lines += [
        f"  {name:<28}{value:>10.1f}"
        for name, value in summary.items()
        if name.startswith("completions/") and "length" in name
    ]
    lines.append(f"  {'completions/clipped_ratio':<28}{100 * summary['completions/clipped_ratio']:>9.2f}%")
    return "\n".join(lines)


def write_results(records: list[dict], summary: dict, output_dir: str, name: str) -> tuple[Path, Path]:
    """Write `<name>.samples.jsonl` (one problem per line, with all its samples) and `<name>.summary.json`."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    samples_path, summary_path = directory / f"{name}.samples.jsonl", directory / f"{name}.summary.json"
    with samples_path.open("w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return samples_path, summary_path
