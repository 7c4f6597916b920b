"""Evaluation problems: benchmarks, the quickstart's held-out set and local files, as `prompt` / `solution` rows."""

import functools
from pathlib import Path

from datasets import Dataset

from ..errors import UsageError


# the usual instruction of the \boxed{} convention (Qwen2.5-Math, DeepSeek-R1 evaluations)
BOXED_PROMPT_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."


# the quickstart's held-out problems: `fipo-trl train configs/quickstart.yaml` never trains on them
SYNTHETIC_HELDOUT = {"train_size": 4096, "heldout_size": 256, "seed": 0}


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
