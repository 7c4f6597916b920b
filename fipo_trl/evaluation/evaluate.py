"""Evaluation of a policy on math problems: Avg@k, Cons@k and Pass@k measured the way the paper reports AIME.

1. [`load_eval_dataset`]: a benchmark (`aime2024`, `aime2025`, `math500`, `gsm8k`), the quickstart's held-out
   problems (`synthetic`), or a local file with `problem`/`answer` columns (given the DAPO template) or with
   `prompt`/`solution` columns (used as they are, plain text or chat messages).
2. Generation through [`fipo_trl.evaluation.generation`] (transformers or vLLM, the same token ids for both).
3. [`score_completions`]: answers scored by the training rewards, `dapo_accuracy_reward` on the "Answer:" line, as
   the official validation does, or `math_verify_reward` on `\\boxed{}`; metrics from [`fipo_trl.evaluation.metrics`].
4. [`write_results`] / [`format_table`]: per-problem results with every sample to
   `<output_dir>/<dataset>.samples.jsonl`, the summary to `<output_dir>/<dataset>.summary.json`, a one-screen table to
   the console.

[`evaluate`] runs all of it for `fipo-trl eval`; [`heldout_check`] is the short before/after check of `fipo-trl
train` (one sample per problem at the training temperature); `fipo_trl.callbacks.MathEvalCallback` runs the same
evaluation on the policy during training.
"""

import functools
import json
from dataclasses import asdict
from pathlib import Path

from datasets import Dataset

from ..errors import UsageError
from .metrics import aggregate_metrics, length_metrics, majority_vote, problem_metrics


# the usual instruction of the \boxed{} convention (Qwen2.5-Math, DeepSeek-R1 evaluations)
BOXED_PROMPT_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
# the quickstart's held-out problems: `fipo-trl train configs/quickstart.yaml` never trains on them
SYNTHETIC_HELDOUT = {"train_size": 4096, "heldout_size": 256, "seed": 0}


def check_sampling_arguments(k: int, temperature: float, top_p: float, max_tokens: int, batch_size: int) -> None:
    """Raise [`UsageError`] naming the first sampling argument out of range."""
    if k < 1:
        raise UsageError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0 (sampling), got {temperature}")
    if not 0 < top_p <= 1:
        raise UsageError(f"top_p must be in (0, 1], got {top_p}")
    if max_tokens < 1:
        raise UsageError(f"max_tokens must be >= 1, got {max_tokens}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")


# --- inputs ---------------------------------------------------------------------------------------------------------


def boxed_prompt(prompt: str | list[dict]) -> str | list[dict]:
    """A prompt in the DAPO template of `fipo_trl.data.math_datasets`, asking for `\\boxed{}` instead of "Answer:"."""
    from ..data.math_datasets import DAPO_PROMPT_TEMPLATE

    prefix, suffix = DAPO_PROMPT_TEMPLATE.split("{problem}")
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    if not (text.startswith(prefix) and text.endswith(suffix)):
        raise UsageError(f"cannot ask for \\boxed{{}}: prompt not in the DAPO template: {text[:60]!r}...")
    text = BOXED_PROMPT_TEMPLATE.format(problem=text[len(prefix) : len(text) - len(suffix)])
    return text if isinstance(prompt, str) else [*prompt[:-1], {**prompt[-1], "content": text}]


def local_file_is_empty(path: Path) -> bool:
    """Whether a local data file holds no rows (`datasets` fails on such files with unrelated messages)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows == 0
    return path.read_text().strip() in ("", "[]")


def load_eval_dataset(name_or_path: str, answer_format: str = "dapo") -> tuple[Dataset, str]:
    """
    A benchmark, the quickstart's held-out problems or a local file as `prompt` / `solution` rows.

    Args:
        name_or_path (`str`):
            `aime2024`, `aime2025`, `math500` or `gsm8k` (from the Hub, through `fipo_trl.data.math_datasets`; chat
            prompts in the DAPO template), `synthetic` (the 256 held-out additions of the quickstart recipe, plain-text
            prompts), or a local `.parquet` / `.jsonl` / `.json` file with `problem` and `answer` columns (given the
            DAPO template) or with `prompt` and `solution` columns (used as they are).
        answer_format (`str`, *optional*, defaults to `"dapo"`):
            `"dapo"` keeps the prompts ("Answer:" line); `"boxed"` rewrites DAPO-template prompts to ask for
            `\\boxed{}` instead.

    Returns:
        `tuple[Dataset, str]`: the dataset (one row per problem) and its short name for file names and metric keys
        (the file stem for a local file).
    """
    from ..data import math_datasets as data

    loaders = {
        "aime2024": data.load_aime_2024,
        "aime2025": data.load_aime_2025,
        "math500": data.load_math_500,
        "gsm8k": data.load_gsm8k,
        "synthetic": synthetic_heldout,
    }
    path = Path(name_or_path)
    if name_or_path in loaders:
        name, load = name_or_path, loaders[name_or_path]
    elif path.suffix in (".parquet", ".jsonl", ".json"):
        if not path.is_file():
            raise UsageError(f"dataset file {name_or_path!r} does not exist")
        if local_file_is_empty(path):
            raise UsageError(f"dataset {path.stem!r} is empty ({name_or_path})")
        name, load = path.stem, functools.partial(load_local_problems, name_or_path)
    else:
        raise UsageError(f"unknown dataset {name_or_path!r}: use {', '.join(loaders)} or a .parquet/.jsonl/.json file")
    try:
        dataset = load()
    except UsageError:
        raise
    except data.LOAD_ERRORS as error:
        raise UsageError(f"cannot load dataset {name_or_path!r}: {str(error).splitlines()[0]}") from error
    check_eval_dataset(dataset, name)
    if answer_format == "boxed":
        dataset = dataset.map(lambda row: {"prompt": boxed_prompt(row["prompt"])}, desc="Asking for \\boxed{}")
    return dataset, name


def synthetic_heldout() -> Dataset:
    """The quickstart recipe's held-out additions (plain-text prompts such as `"37+48=?\\n"`)."""
    from ..data.synthetic import train_and_heldout

    return train_and_heldout(**SYNTHETIC_HELDOUT)[1]


def load_local_problems(path: str) -> Dataset:
    """A local file's `prompt`/`solution` rows as they are, or its `problem`/`answer` rows in the DAPO template."""
    from ..data import math_datasets as data

    rows = data.read_dataset(path)
    if {"prompt", "solution"} <= set(rows.column_names):
        return rows.select_columns(["prompt", "solution"])
    return data.load_math_dataset(path)


def load_eval_datasets(names_or_paths: list[str]) -> dict[str, Dataset]:
    """`{name: dataset}` of [`load_eval_dataset`] for each entry, e.g. a recipe's `math_eval_datasets`."""
    datasets = {}
    for name_or_path in names_or_paths:
        try:
            dataset, name = load_eval_dataset(name_or_path)
        except UsageError as exc:
            raise UsageError(f"math_eval_datasets: {exc}") from None
        datasets[name] = dataset
    return datasets


def check_eval_dataset(dataset: Dataset, name: str) -> Dataset:
    """
    Raise [`UsageError`] unless `dataset` has rows, the `prompt` and `solution` columns the rewards read, and one
    answer per `solution`.
    """
    from ..data.math_datasets import REQUIRED_COLUMNS, check_solutions, require_columns

    require_columns(dataset, REQUIRED_COLUMNS, f"dataset {name!r}")
    if len(dataset) == 0:
        raise UsageError(f"dataset {name!r} is empty")
    check_solutions(dataset, f"dataset {name!r}")
    return dataset


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
        records.append(
            {
                "index": index,
                "prompt": row["prompt"],
                "solution": row["solution"],
                "majority_answer": answers[span][majority_vote(answers[span])],
                "num_correct": sum(correct[span]),
                "metrics": problem_metrics(answers[span], correct[span], len(samples)),
                "samples": [
                    {**sample, "answer": answer, "reward": reward, "correct": ok}
                    for sample, answer, reward, ok in zip(
                        samples, answers[span], rewards[span], correct[span], strict=True
                    )
                ],
            }
        )
    return records


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


# --- the command ----------------------------------------------------------------------------------------------------


def evaluate(args) -> dict:
    """
    Run `fipo-trl eval` end to end: load, generate, score, write the JSONL and summary files, print the table.

    Args:
        args ([`~fipo_trl.scripts.eval.EvalArguments`]):
            Parsed arguments (any object with its fields).

    Returns:
        `dict`: the summary written to `<output_dir>/<dataset>.summary.json` (run settings and `metrics`).
    """
    from ..models import load_model_and_tokenizer, load_tokenizer, resolve_model_path
    from .generation import generate_with_transformers, generate_with_vllm, tokenize_prompts, vllm_usable

    model_path = resolve_model_path(args.model_name_or_path)
    dataset, name = load_eval_dataset(args.dataset, args.answer_format)
    backend = args.backend if args.backend != "auto" else "vllm" if vllm_usable() else "transformers"
    if backend == "vllm" and not vllm_usable():
        raise UsageError("--backend vllm needs vLLM installed and a GPU")
    sampling = {"k": args.k, "temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens}
    tokenizer = load_tokenizer(model_path)
    prompt_ids = tokenize_prompts(dataset["prompt"], tokenizer)  # before the model loads: a bad prompt fails fast
    if backend == "vllm":
        completions = generate_with_vllm(model_path, tokenizer, prompt_ids, **sampling, seed=args.seed)
    else:
        model, _ = load_model_and_tokenizer(model_path, args.dtype)
        completions = generate_with_transformers(
            model, tokenizer, prompt_ids, **sampling, batch_size=args.batch_size, seed=args.seed
        )
    records = score_completions(dataset, completions, args.answer_format)
    metrics = summarize(records)
    summary = {**asdict(args), "model_path": model_path, "backend": backend, "num_problems": len(records)}
    summary["metrics"] = metrics
    samples_path, summary_path = write_results(records, summary, args.output_dir, name)
    title = (
        f"{name}: {len(records)} problems x {args.k} samples | {model_path} | T={args.temperature} "
        f"top_p={args.top_p} max_tokens={args.max_tokens} | {args.answer_format} | {backend}"
    )
    print(format_table(metrics, args.k, title))
    print(f"  samples: {samples_path}\n  summary: {summary_path}")
    return summary


# --- the held-out check of `fipo-trl train` -------------------------------------------------------------------------


def heldout_check(
    model,
    tokenizer,
    dataset,
    reward_func,
    accelerator=None,
    max_new_tokens=64,
    temperature=1.0,
    seed=0,
    batch_size=64,
    gradient_checkpointing_kwargs=None,
) -> dict[str, float]:
    """
    Avg@1 and mean completion length on `dataset`: one completion per row, sampled as in training (same
    temperature, no top-p/top-k, prompts rendered as TRL renders them), scored by `reward_func` (correct when the
    reward is positive). Under several processes each samples a padded share of the rows, as `MathEvalCallback`
    does ([`~fipo_trl.evaluation.generation.generate_on_processes`], which ZeRO-3 needs), and the per-row results
    are gathered and counted once.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The policy: a plain model, or the trainer's `model_wrapped` with its `accelerator`; its train/eval mode
            is restored after.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        dataset ([`~datasets.Dataset`]):
            Rows with `prompt` and `solution`.
        reward_func (`callable`):
            A TRL reward function, e.g. `dapo_accuracy_reward`.
        accelerator ([`~accelerate.Accelerator`], *optional*):
            Shares the rows over processes and gathers the results.
        max_new_tokens (`int`, *optional*, defaults to `64`):
            Completion budget (use the training `max_completion_length`).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature (use the training one).
        seed (`int`, *optional*, defaults to `0`):
            Sampling seed (process `r` uses `seed + r`); the training RNG is left untouched.
        batch_size (`int`, *optional*, defaults to `64`):
            Sequences per `generate` call.
        gradient_checkpointing_kwargs (`dict`, *optional*):
            The run's, to turn gradient checkpointing back on after generation.

    Returns:
        `dict[str, float]`: `accuracy` in [0, 1] and `mean_length`, the mean completion length in tokens (EOS
        included), over all rows.
    """
    from accelerate.utils import gather_object

    from .generation import generate_on_processes

    rank = accelerator.process_index if accelerator else 0
    indices, samples = generate_on_processes(
        model,
        tokenizer,
        dataset["prompt"],
        accelerator=accelerator,
        gradient_checkpointing_kwargs=gradient_checkpointing_kwargs,
        k=1,
        temperature=temperature,
        top_p=1.0,
        max_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed + rank,
    )
    rows = dataset.select(indices)
    texts = [completions[0]["completion"] for completions in samples]
    if not isinstance(rows["prompt"][0], str):  # chat prompts get chat completions, as in training
        texts = [[{"role": "assistant", "content": text}] for text in texts]
    rewards = reward_func(texts, solution=rows["solution"])
    results = [
        (index, reward is not None and reward > 0, completions[0]["num_tokens"])
        for index, reward, completions in zip(indices, rewards, samples, strict=True)
    ]
    if accelerator is not None and accelerator.num_processes > 1:
        results = gather_object(results)
    # a padded share repeats its last row: count each row once
    unique = {index: (correct, tokens) for index, correct, tokens in results}
    correct = sum(ok for ok, _ in unique.values())
    tokens = sum(length for _, length in unique.values())
    return {"accuracy": correct / max(len(unique), 1), "mean_length": tokens / max(len(unique), 1)}
