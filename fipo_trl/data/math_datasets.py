"""Math RL datasets as `prompt` / `solution` columns, for [`FIPOTrainer`] and the rewards of [`fipo_trl.rewards`].

1. DAPO-Math-17k (training, docs/fipo.md §3.2): the hub file holds chat prompts in the DAPO template and the answer
   in `reward_model.ground_truth`; each of its ~17k problems appears ~100 times, so it is de-duplicated by default.
2. AIME 2024 / AIME 2025 (evaluation): one row per problem, from the verl layout of the official run or from
   `problem` / `answer` columns.
3. MATH-500, GSM8K (answer after "####"), and any file with problem/answer columns, as extras.

Every loader takes a hub id or a local path (parquet, jsonl, json, or a folder of them) and, when given a tokenizer,
left-truncates prompts to 2048 tokens like the official run. Problems from problem/answer columns get the DAPO
template, whose "Answer:" line is what [`~fipo_trl.rewards.dapo_accuracy_reward`] reads.

[`get_dataset`] picks the loader for a `fipo-trl train` recipe's `dataset_name` and checks the columns.
"""

import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Value, load_dataset
from datasets.exceptions import DatasetGenerationError

from ..errors import UsageError
from ..official import MAX_PROMPT_LENGTH  # the official run's prompt budget, truncated "left"
from ..run.preflight import check_data_file, check_prompts
from ..text import solution_text


logger = logging.getLogger(__name__)


DAPO_MATH_ID = "BytedTsinghua-SIA/DAPO-Math-17k"
AIME_2024_ID = "BytedTsinghua-SIA/AIME-2024"  # the official run's validation file: 30 problems, each repeated 32 times
AIME_2025_ID = "yentinglin/aime_2025"
MATH_500_ID = "HuggingFaceH4/MATH-500"
GSM8K_ID = "openai/gsm8k"

# docs/fipo.md §3.2: the user message of every DAPO-Math-17k row
DAPO_PROMPT_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)

REQUIRED_COLUMNS = ("prompt", "solution")  # what FIPOTrainer and the rewards read
_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def apply_dapo_template(
    problem: str, conversational: bool = True, template: str = DAPO_PROMPT_TEMPLATE
) -> str | list[dict[str, str]]:
    """
    The DAPO-Math-17k prompt for a raw problem.

    Args:
        problem (`str`):
            The problem statement.
        conversational (`bool`, *optional*, defaults to `True`):
            Return one user message (`[{"role": "user", "content": ...}]`), as DAPO-Math-17k stores it and as TRL
            applies the chat template to; `False` returns the plain text.
        template (`str`, *optional*, defaults to `DAPO_PROMPT_TEMPLATE`):
            A format string with a `{problem}` field.

    Returns:
        `str` or `list[dict[str, str]]`: the prompt.
    """
    text = template.format(problem=problem)
    return [{"role": "user", "content": text}] if conversational else text


def read_dataset(path_or_id: str, split: str = "train", name: str | None = None) -> Dataset:
    """
    One split of a local file, a local folder or a hub dataset, through `datasets.load_dataset`.

    Args:
        path_or_id (`str`):
            A `.parquet`, `.jsonl` or `.json` file, a folder that `load_dataset` reads, or a hub dataset id.
        split (`str`, *optional*, defaults to `"train"`):
            Split of a folder or hub dataset; a single file is always read whole.
        name (`str`, *optional*):
            Configuration of a hub dataset (`"main"` for GSM8K).

    Returns:
        [`~datasets.Dataset`]: the rows as stored.
    """
    suffix = os.path.splitext(path_or_id)[1].lower()
    if os.path.isfile(path_or_id):
        if suffix not in _FILE_BUILDERS:
            raise ValueError(f"{path_or_id}: unsupported file type {suffix!r}; use one of {sorted(_FILE_BUILDERS)}")
        # `datasets` fails late or obscurely on an empty file or a non-UTF-8 row: name the file and row now
        check_data_file(path_or_id)
        return load_dataset(_FILE_BUILDERS[suffix], data_files=path_or_id, split="train")
    return load_dataset(path_or_id, name=name, split=split)


def require_columns(dataset: Dataset, columns, source: str) -> None:
    """
    Raise [`UsageError`] unless `dataset` has every one of `columns`, naming `source` (a file, a dataset name or a
    role such as "training dataset"), the missing columns and the columns it has.
    """
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        what = f"column {missing[0]!r}" if len(missing) == 1 else f"columns {', '.join(map(repr, missing))}"
        raise UsageError(
            f"{source}: no {what} (has {dataset.column_names}); rows need {' and '.join(map(repr, columns))}"
        )


def check_solutions(dataset: Dataset, source: str) -> None:
    """
    Refuse a `solution` column that holds lists or mappings, naming the first such row (counted from 1).

    The rewards compare one answer per row as text ([`~fipo_trl.rewards.dapo.solution_text`]): a list of accepted
    answers would become its Python repr (`"['2']"`), match no completion, and the run would train at reward -1.
    """
    if isinstance(dataset.features.get("solution"), Value):
        return  # a column of strings or numbers (or nulls): no row to look at
    for row, value in enumerate(dataset["solution"], start=1):
        if isinstance(value, (list, tuple, dict)):
            raise UsageError(
                f"{source}, row {row}: solution is a {type(value).__name__} ({value!r:.60}); write one answer per "
                "row as text or a number (the rewards compare the completion's answer to one string)"
            )


def truncate_prompt(prompt: str | list[dict], tokenizer, max_prompt_length: int = MAX_PROMPT_LENGTH):
    """
    Left-truncate a prompt to `max_prompt_length` tokens, keeping its end (the answer-format instruction).

    The official run cuts the templated token ids from the left. A chat prompt here keeps its chat template whole
    and loses the start of its last message's content instead, so that it stays a list of messages.

    Args:
        prompt (`str` or `list[dict]`):
            Plain text, or chat messages (counted with the chat template and the generation prompt).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The policy's tokenizer.
        max_prompt_length (`int`, *optional*, defaults to `2048`):
            Token budget of the prompt; the official run's `max_prompt_length`.

    Returns:
        `str` or `list[dict]`: the prompt, unchanged when it fits.
    """
    cut = _num_tokens(prompt, tokenizer) - max_prompt_length
    if cut <= 0:
        return prompt
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while True:
        kept = tokenizer.decode(ids[cut:])
        truncated = kept if isinstance(prompt, str) else [*prompt[:-1], {**prompt[-1], "content": kept}]
        # re-tokenising a decoded cut can merge differently at its edge: cut one more token until it fits
        if cut >= len(ids) or _num_tokens(truncated, tokenizer) <= max_prompt_length:
            return truncated
        cut += 1


def _num_tokens(prompt: str | list[dict], tokenizer) -> int:
    """Prompt length in tokens as TRL sees it: a chat prompt with its template and generation prompt."""
    if not isinstance(prompt, str):
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def truncate_prompts(dataset: Dataset, tokenizer, max_prompt_length: int = MAX_PROMPT_LENGTH) -> Dataset:
    """[`truncate_prompt`] over the `prompt` column of `dataset`."""
    return dataset.map(
        lambda row: {"prompt": truncate_prompt(row["prompt"], tokenizer, max_prompt_length)},
        desc="Truncating prompts",
    )


def _finish(dataset: Dataset, tokenizer, max_prompt_length: int) -> Dataset:
    return dataset if tokenizer is None else truncate_prompts(dataset, tokenizer, max_prompt_length)


def load_math_dataset(
    path_or_id: str,
    problem_column: str = "problem",
    answer_column: str = "answer",
    split: str = "train",
    name: str | None = None,
    conversational: bool = True,
    template: str = DAPO_PROMPT_TEMPLATE,
    tokenizer=None,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
) -> Dataset:
    """
    Any dataset with a problem column and an answer column, as `prompt` (DAPO template) and `solution` (string).

    Args:
        path_or_id (`str`):
            A local `.parquet` / `.jsonl` / `.json` file or folder, or a hub dataset id.
        problem_column (`str`, *optional*, defaults to `"problem"`):
            Column holding the problem statement.
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Column holding the final answer (any type; stored as a string).
        split (`str`, *optional*, defaults to `"train"`):
            Split of a folder or hub dataset.
        name (`str`, *optional*):
            Configuration of a hub dataset.
        conversational (`bool`, *optional*, defaults to `True`):
            Chat prompts (one user message) rather than plain text.
        template (`str`, *optional*, defaults to `DAPO_PROMPT_TEMPLATE`):
            Prompt format string with a `{problem}` field; `"{problem}"` keeps the bare problem.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            When given, prompts are left-truncated to `max_prompt_length` tokens.
        max_prompt_length (`int`, *optional*, defaults to `2048`):
            Token budget of a prompt (official run: 2048).

    Returns:
        [`~datasets.Dataset`]: columns `prompt` and `solution`, one row per source row.
    """
    dataset = read_dataset(path_or_id, split=split, name=name)
    require_columns(dataset, [problem_column, answer_column], path_or_id)
    return _finish(
        _from_problem_answer(dataset, problem_column, answer_column, conversational, template),
        tokenizer,
        max_prompt_length,
    )


def _from_problem_answer(dataset, problem_column, answer_column, conversational, template, answer_fn=solution_text):
    return Dataset.from_dict(
        {
            "prompt": [apply_dapo_template(p, conversational, template) for p in dataset[problem_column]],
            "solution": [answer_fn(answer) for answer in dataset[answer_column]],
        }
    )


def _joined_contents(messages: pa.ChunkedArray) -> pa.ChunkedArray:
    """The `content` of each row's messages joined by newlines, chunk by chunk (no copy of a 1.79M-row column)."""
    chunks = []
    for chunk in messages.chunks:
        offsets = pc.subtract(chunk.offsets, chunk.offsets[0])
        contents = pc.struct_field(chunk.flatten(), "content")
        chunks.append(pc.binary_join(type(chunk).from_arrays(offsets, contents), "\n"))
    return pa.chunked_array(chunks, pa.string())


def _from_verl_layout(dataset: Dataset, source: str, conversational: bool, deduplicate: bool) -> Dataset:
    """`prompt` (chat list) and `reward_model.ground_truth` columns to `prompt` / `solution`, in Arrow."""
    require_columns(dataset, ["prompt", "reward_model"], source)
    table = dataset.data.table
    messages = table["prompt"]
    if not pa.types.is_list(messages.type) and not pa.types.is_large_list(messages.type):
        raise ValueError(f"{source}: column 'prompt' should hold chat messages, not {messages.type}")
    rewards = table["reward_model"]
    if not pa.types.is_struct(rewards.type) or rewards.type.get_field_index("ground_truth") < 0:
        raise ValueError(f"{source}: column 'reward_model' has no field 'ground_truth' ({rewards.type})")
    solution = pc.struct_field(rewards, "ground_truth").cast(pa.string())
    text = _joined_contents(messages)  # the plain-text prompt and the de-duplication key
    prompt = messages if conversational else text
    if deduplicate:
        keys = pa.table({"text": text, "solution": solution, "row": pa.array(range(len(table)), pa.int64())})
        first = keys.group_by(["text", "solution"], use_threads=False).aggregate([("row", "min")])["row_min"]
        rows = pc.take(first, pc.sort_indices(first))  # first occurrences, in file order
        prompt, solution = pc.take(prompt, rows), pc.take(solution, rows)
    return Dataset(pa.table({"prompt": prompt, "solution": solution}))


def load_dapo_math(
    path_or_id: str = DAPO_MATH_ID,
    split: str = "train",
    deduplicate: bool = True,
    conversational: bool = True,
    tokenizer=None,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
) -> Dataset:
    """
    DAPO-Math-17k, the training set of DAPO and FIPO (docs/fipo.md §3.2).

    Rows are read in the hub layout: `prompt` is a list with one user message that already holds the DAPO template,
    `reward_model` is `{"ground_truth": ..., "style": ...}`, next to `data_source`, `ability` and `extra_info`.

    Args:
        path_or_id (`str`, *optional*, defaults to `"BytedTsinghua-SIA/DAPO-Math-17k"`):
            Hub id, or a local copy (e.g. `dapo-math-17k.parquet`).
        split (`str`, *optional*, defaults to `"train"`):
            Split of a folder or hub dataset.
        deduplicate (`bool`, *optional*, defaults to `True`):
            Keep the first row of each distinct (prompt, answer): the hub file repeats its ~17k problems ~100 times
            (~1.79M rows). The official run trains on the repeated file; `False` keeps it as is.
        conversational (`bool`, *optional*, defaults to `True`):
            Chat prompts as stored; `False` gives the message content as plain text.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            When given, prompts are left-truncated to `max_prompt_length` tokens.
        max_prompt_length (`int`, *optional*, defaults to `2048`):
            Token budget of a prompt (official run: 2048).

    Returns:
        [`~datasets.Dataset`]: columns `prompt` and `solution`.
    """
    dataset = read_dataset(path_or_id, split=split)
    return _finish(_from_verl_layout(dataset, path_or_id, conversational, deduplicate), tokenizer, max_prompt_length)


def load_aime(
    path_or_id: str,
    split: str = "train",
    problem_column: str = "problem",
    answer_column: str = "answer",
    conversational: bool = True,
    tokenizer=None,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
) -> Dataset:
    """
    An AIME set, one row per problem: [`load_aime_2024`] (the official run's validation set) and [`load_aime_2025`]
    (the paper's supplementary benchmark) are this loader with their own default source.

    A source in the verl layout (`prompt` chat list and `reward_model`, like `BytedTsinghua-SIA/AIME-2024`, which
    repeats each of its 30 problems 32 times) is de-duplicated; any other source is read from `problem_column` and
    `answer_column` and gets the DAPO template.

    Args:
        path_or_id (`str`):
            Hub id or local file/folder.
        split (`str`, *optional*, defaults to `"train"`):
            Split of a folder or hub dataset.
        problem_column (`str`, *optional*, defaults to `"problem"`):
            Problem column of a source not in the verl layout (`"Problem"` for `Maxwell-Jia/AIME_2024`).
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Answer column of a source not in the verl layout.
        conversational (`bool`, *optional*, defaults to `True`):
            Chat prompts rather than plain text.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            When given, prompts are left-truncated to `max_prompt_length` tokens.
        max_prompt_length (`int`, *optional*, defaults to `2048`):
            Token budget of a prompt.

    Returns:
        [`~datasets.Dataset`]: columns `prompt` and `solution`.
    """
    dataset = read_dataset(path_or_id, split=split)
    if "reward_model" in dataset.column_names:  # verl layout, as in the official run's aime-2024.parquet
        dataset = _from_verl_layout(dataset, path_or_id, conversational, deduplicate=True)
    else:
        require_columns(dataset, [problem_column, answer_column], path_or_id)
        dataset = _from_problem_answer(dataset, problem_column, answer_column, conversational, DAPO_PROMPT_TEMPLATE)
    return _finish(dataset, tokenizer, max_prompt_length)


def load_aime_2024(path_or_id: str = AIME_2024_ID, **kwargs) -> Dataset:
    """AIME 2024 by [`load_aime`], by default from `BytedTsinghua-SIA/AIME-2024` (the official validation file)."""
    return load_aime(path_or_id, **kwargs)


def load_aime_2025(path_or_id: str = AIME_2025_ID, **kwargs) -> Dataset:
    """AIME 2025 (I and II) by [`load_aime`], from `yentinglin/aime_2025` (`problem` / `answer` columns) by default."""
    return load_aime(path_or_id, **kwargs)


def load_math_500(
    path_or_id: str = MATH_500_ID,
    split: str = "test",
    conversational: bool = True,
    tokenizer=None,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
) -> Dataset:
    """
    MATH-500: its `answer` column becomes `solution` (its own `solution` column, a worked solution, is dropped).

    Arguments as in [`load_math_dataset`].

    Returns:
        [`~datasets.Dataset`]: columns `prompt` and `solution`.
    """
    return load_math_dataset(
        path_or_id,
        split=split,
        conversational=conversational,
        tokenizer=tokenizer,
        max_prompt_length=max_prompt_length,
    )


def gsm8k_final_answer(answer: str) -> str:
    """The number after "####" in a GSM8K answer, without thousands separators."""
    return answer.rpartition("####")[2].strip().replace(",", "")


def load_gsm8k(
    path_or_id: str = GSM8K_ID,
    split: str = "test",
    name: str = "main",
    conversational: bool = True,
    tokenizer=None,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
) -> Dataset:
    """
    GSM8K: `question` becomes the prompt and the number after "####" in `answer` the `solution`.

    Args:
        name (`str`, *optional*, defaults to `"main"`):
            Hub configuration (ignored for a local file).

    Other arguments as in [`load_math_dataset`].

    Returns:
        [`~datasets.Dataset`]: columns `prompt` and `solution`.
    """
    dataset = read_dataset(path_or_id, split=split, name=name)
    require_columns(dataset, ["question", "answer"], path_or_id)
    dataset = _from_problem_answer(
        dataset, "question", "answer", conversational, DAPO_PROMPT_TEMPLATE, answer_fn=gsm8k_final_answer
    )
    return _finish(dataset, tokenizer, max_prompt_length)


# --- the datasets of a `fipo-trl train` recipe -----------------------------------------------------------------------


def get_dataset(script_args, tokenizer=None) -> tuple[Dataset, Dataset | None]:
    """
    The `(train, heldout)` datasets of a recipe's [`~fipo_trl.cli.recipe.FIPOScriptArguments`].

    `dataset_name` selects the source: `"synthetic"` (the generator of [`fipo_trl.data.synthetic`], with a disjoint
    held-out set), DAPO-Math-17k (its Hub id, or a local copy whose name contains "dapo-math", read by
    [`load_dapo_math`]), or any local file, folder or Hub dataset with `prompt` and `solution` columns (held-out rows
    from `dataset_test_split`). A source without a test split (a single file, DAPO-Math-17k) gives `heldout_size` of
    its rows to the held-out set, drawn with `seed` 0 and never trained on, and says so. Both datasets are checked for
    those columns and for one answer per `solution`; with a `tokenizer`, chat prompts need its chat template, and
    with `max_prompt_length` set, training prompts are left-truncated. Whether the training set holds one
    generation batch of prompts is [`check_enough_prompts`] (called by `fipo_trl.run.setup.check_run_fits`).

    Returns:
        `tuple[Dataset, Dataset | None]`: `heldout` is `None` when `heldout_size` is 0.

    Raises:
        UsageError: when the dataset cannot be loaded or lacks a column.
    """
    check_script_args(script_args)
    name = script_args.dataset_name
    if name == "synthetic":
        from .synthetic import train_and_heldout

        train, heldout = train_and_heldout(
            script_args.synthetic_train_size,
            max(script_args.heldout_size, 1),
            seed=script_args.synthetic_seed,
            task=script_args.synthetic_task,
            digits=script_args.synthetic_digits,
        )
        heldout = heldout if script_args.heldout_size > 0 else None
    else:
        train, heldout = _load_recipe_dataset(script_args)
    if len(train) == 0:
        raise UsageError(f"dataset_name={name!r} has no training rows")
    require_columns(train, REQUIRED_COLUMNS, f"training dataset {name}")
    check_prompts(train, name)
    check_solutions(train, name)
    if heldout is None and script_args.heldout_size > 0:
        train, heldout = split_off_heldout(train, script_args.heldout_size, name)
    if heldout is not None:
        require_columns(heldout, REQUIRED_COLUMNS, f"held-out dataset {name}")
        check_solutions(heldout, f"{name} (held-out)")
    if tokenizer is not None:
        check_chat_template(train, tokenizer, name)
    if tokenizer is not None and script_args.max_prompt_length is not None:
        train = truncate_prompts(train, tokenizer, script_args.max_prompt_length)
    return train, heldout


# what `datasets.load_dataset` raises for a source it cannot read: a missing file or Hub id (FileNotFoundError and
# its DatasetNotFoundError), an unknown split or a bad configuration (ValueError), a file it cannot parse
# (DatasetGenerationError, pyarrow's ArrowException) and no network (ConnectionError)
LOAD_ERRORS = (OSError, ValueError, DatasetGenerationError, pa.ArrowException)


def _load_recipe_dataset(script_args) -> tuple[Dataset, Dataset | None]:
    name = script_args.dataset_name
    heldout = None
    try:
        # DAPO-Math-17k is stored in verl's layout (answer under reward_model): its loader makes prompt/solution
        if name == DAPO_MATH_ID or "dapo-math" in Path(name).name.lower():
            train = load_dapo_math(name, split=script_args.dataset_train_split)
        else:
            train = read_dataset(name, split=script_args.dataset_train_split, name=script_args.dataset_config)
            if script_args.heldout_size > 0 and not os.path.isfile(name):
                heldout = read_dataset(name, split=script_args.dataset_test_split, name=script_args.dataset_config)
                heldout = heldout.select(range(min(script_args.heldout_size, len(heldout))))
    except UsageError:
        raise
    except LOAD_ERRORS as exc:
        raise UsageError(f"cannot load dataset_name={name!r}: {str(exc).splitlines()[0]}") from None
    return train, heldout


def split_off_heldout(train: Dataset, heldout_size: int, source: str) -> tuple[Dataset, Dataset]:
    """
    `heldout_size` rows of `train` (drawn with seed 0) as the held-out set, and the rest to train on.

    For a source without a test split (a single file, DAPO-Math-17k), so that `heldout_size` does what it says.

    Raises:
        UsageError: when no row would be left to train on.
    """
    if heldout_size >= len(train):
        raise UsageError(
            f"heldout_size: {heldout_size} held-out rows would leave none of the {len(train)} rows of {source} to "
            "train on; lower heldout_size (or 0 to skip the check)"
        )
    split = train.train_test_split(test_size=heldout_size, shuffle=True, seed=0)
    logger.warning(
        "Held-out check: %d of the %d rows of %s (drawn with seed 0) are held out and not trained on; %d remain "
        "for training. Set heldout_size 0 to train on every row.",
        heldout_size,
        len(train),
        source,
        len(split["train"]),
    )
    return split["train"], split["test"]


def check_script_args(script_args) -> None:
    """Refuse script fields out of range, naming the field: sizes, the synthetic task, the prompt budget."""
    from .synthetic import SYNTHETIC_TASKS

    if script_args.heldout_size < 0:
        raise UsageError(f"heldout_size: {script_args.heldout_size} must be >= 0 (0 skips the held-out check)")
    if script_args.max_prompt_length is not None and script_args.max_prompt_length < 1:
        raise UsageError(f"max_prompt_length: {script_args.max_prompt_length} must be >= 1 (or null for no limit)")
    if script_args.dataset_name != "synthetic":
        return
    if script_args.synthetic_task not in SYNTHETIC_TASKS:
        raise UsageError(f"synthetic_task: {script_args.synthetic_task!r} is not one of {', '.join(SYNTHETIC_TASKS)}")
    for field in ("synthetic_digits", "synthetic_train_size"):
        if getattr(script_args, field) < 1:
            raise UsageError(f"{field}: {getattr(script_args, field)} must be >= 1")


def check_chat_template(dataset: Dataset, tokenizer, source: str) -> None:
    """Refuse chat-message prompts when the tokenizer has no chat template to render them with."""
    from ..model_loading import require_chat_template

    if not isinstance(dataset[0]["prompt"], str):
        require_chat_template(tokenizer, source)


def check_enough_prompts(train: Dataset, training_args, source: str) -> None:
    """
    Refuse a training set with fewer prompts than one generation batch: TRL's sampler yields only full batches, so
    such a run would train 0 steps and save the untrained model as its result.
    """
    needed = training_args.generation_batch_size // training_args.num_generations
    if len(train) < needed:
        raise UsageError(
            f"{source} has {len(train)} training prompts, fewer than one generation batch of {needed} "
            f"(generation_batch_size {training_args.generation_batch_size} / num_generations "
            f"{training_args.num_generations}), so no step would train: add prompts or lower "
            "per_device_train_batch_size or steps_per_generation"
        )
