"""`fipo-trl eval`: Avg@k, Cons@k and Pass@k of a model on a math dataset, measured the way the paper reports AIME.

    fipo-trl eval --model_name_or_path QwenPilot/FIPO_32B --dataset aime2024        # paper protocol (spec §3.5)
    fipo-trl eval --model_name_or_path outputs/checkpoint-500 --dataset problems.jsonl --k 4 --max_tokens 1024

What it does, in order:
1. Prompts are rendered as TRL's GRPOTrainer renders them in training (chat template with a generation prompt, or the
   plain string) and tokenized once; both backends receive these token ids, so they see the same prompts.
2. Generation uses vLLM's offline `LLM.generate` when vLLM is installed and a GPU is present, and transformers
   `generate` in batches otherwise. The vLLM path is small and is not exercised by the test suite (no GPU in CI).
3. Answers are scored by the training rewards: `dapo_accuracy_reward` on the "Answer:" line, as the official
   validation does, or `math_verify_reward` on `\\boxed{}`.
4. Metrics come from `fipo_trl.eval_metrics` (the tie rule of Cons@k is documented there). Per-problem results with
   every sample go to `<output_dir>/<dataset>.samples.jsonl`, the summary to `<output_dir>/<dataset>.summary.json`,
   and a one-screen table to the console.
5. `MathEvalCallback` runs the same evaluation on the policy during training and logs `eval_<dataset>/avg@k` etc.
   through the trainer, so wandb shows `eval/<dataset>/avg@k` next to the official `val-core/.../mean@32`.
"""

import functools
import importlib.util
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import datasets
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    HfArgumentParser,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
)
from transformers.trainer_utils import get_last_checkpoint

from fipo_trl.eval_metrics import aggregate_metrics, length_metrics, majority_vote, problem_metrics


# the usual instruction of the \boxed{} convention (Qwen2.5-Math, DeepSeek-R1 evaluations)
BOXED_PROMPT_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."


class EvalInputError(ValueError):
    """A problem with the user's inputs: the CLI prints its message on one line and exits non-zero."""


@dataclass
class EvalArguments:
    """
    Arguments of `fipo-trl eval`.

    Parameters:
        model_name_or_path (`str`):
            Model directory, Hub id, training checkpoint (`checkpoint-N`, LoRA adapters included) or training output
            directory (its last `checkpoint-N` is used).
        dataset (`str`, *optional*, defaults to `"aime2024"`):
            `aime2024`, `aime2025`, `math500`, `gsm8k` (the loaders of `fipo_trl.data`), or a local `.parquet`,
            `.jsonl` or `.json` file with `problem` and `answer` columns.
        k (`int`, *optional*, defaults to `32`):
            Samples per problem. Paper: 32 (spec §3.5).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature. Paper: 1.0 (spec §3.5).
        top_p (`float`, *optional*, defaults to `0.7`):
            Nucleus sampling threshold. Paper: 0.7 (spec §3.5, official `val_kwargs.top_p`).
        max_tokens (`int`, *optional*, defaults to `20480`):
            Maximum completion length in tokens. Default: the official 32B max response length (spec §3.1).
        answer_format (`str`, *optional*, defaults to `"dapo"`):
            `"dapo"`: last "Answer:" line scored by `dapo_accuracy_reward`, as the official validation does.
            `"boxed"`: last `\\boxed{}` scored by `math_verify_reward`. Prompts ask for the matching format.
        backend (`str`, *optional*, defaults to `"auto"`):
            `"vllm"`, `"transformers"`, or `"auto"`: vLLM when it is installed and a GPU is present.
        batch_size (`int`, *optional*, defaults to `32`):
            Sequences per transformers `generate` call (vLLM schedules its own batches).
        seed (`int`, *optional*, defaults to `42`):
            Sampling seed.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weight dtype: `"auto"` (the checkpoint's), `"bfloat16"`, `"float16"` or `"float32"`.
        output_dir (`str`, *optional*, defaults to `"eval_results"`):
            Where `<dataset>.samples.jsonl` and `<dataset>.summary.json` are written.
    """

    model_name_or_path: str = field(metadata={"help": "Model directory, Hub id, checkpoint or LoRA adapter dir."})
    dataset: str = field(
        default="aime2024",
        metadata={"help": "aime2024, aime2025, math500, gsm8k, or a local file with problem/answer columns."},
    )
    k: int = field(default=32, metadata={"help": "Samples per problem. Paper: 32."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature. Paper: 1.0."})
    top_p: float = field(default=0.7, metadata={"help": "Nucleus sampling threshold. Paper: 0.7."})
    max_tokens: int = field(default=20480, metadata={"help": "Max completion tokens. Official 32B: 20480."})
    answer_format: Literal["dapo", "boxed"] = field(
        default="dapo",
        metadata={"help": "dapo: 'Answer:' line, dapo_accuracy_reward. boxed: \\boxed{}, math_verify_reward."},
    )
    backend: Literal["auto", "vllm", "transformers"] = field(
        default="auto", metadata={"help": "auto: vLLM when installed and a GPU is present, else transformers."}
    )
    batch_size: int = field(default=32, metadata={"help": "Sequences per transformers generate call."})
    seed: int = field(default=42, metadata={"help": "Sampling seed."})
    dtype: str = field(default="auto", metadata={"help": "auto, bfloat16, float16 or float32."})
    output_dir: str = field(default="eval_results", metadata={"help": "Where the JSONL and summary JSON go."})

    def __post_init__(self):
        check_sampling_arguments(self.k, self.temperature, self.top_p, self.max_tokens, self.batch_size)
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise EvalInputError(f"--dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")


def check_sampling_arguments(k: int, temperature: float, top_p: float, max_tokens: int, batch_size: int) -> None:
    """Raise [`EvalInputError`] naming the first sampling argument out of range."""
    if k < 1:
        raise EvalInputError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise EvalInputError(f"temperature must be > 0 (sampling), got {temperature}")
    if not 0 < top_p <= 1:
        raise EvalInputError(f"top_p must be in (0, 1], got {top_p}")
    if max_tokens < 1:
        raise EvalInputError(f"max_tokens must be >= 1, got {max_tokens}")
    if batch_size < 1:
        raise EvalInputError(f"batch_size must be >= 1, got {batch_size}")


# --- inputs ---------------------------------------------------------------------------------------------------------


def boxed_prompt(prompt: str | list[dict]) -> str | list[dict]:
    """A prompt in the DAPO template of `fipo_trl.data` rewritten to ask for `\\boxed{}` instead of "Answer:"."""
    from fipo_trl.data import DAPO_PROMPT_TEMPLATE

    prefix, suffix = DAPO_PROMPT_TEMPLATE.split("{problem}")
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    if not (text.startswith(prefix) and text.endswith(suffix)):
        raise EvalInputError(f"cannot ask for \\boxed{{}}: prompt not in the DAPO template: {text[:60]!r}...")
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
    A benchmark or a local problem file as `prompt` / `solution` rows, prompted for `answer_format`.

    Args:
        name_or_path (`str`):
            `aime2024`, `aime2025`, `math500` or `gsm8k` (from the Hub, through `fipo_trl.data`), or a local
            `.parquet` / `.jsonl` / `.json` file with `problem` and `answer` columns.
        answer_format (`str`, *optional*, defaults to `"dapo"`):
            `"dapo"` keeps the DAPO template ("Answer:" line); `"boxed"` asks for `\\boxed{}` instead.

    Returns:
        `tuple[Dataset, str]`: the dataset (chat prompts, one row per problem) and its short name for file names and
        metric keys (the file stem for a local file).
    """
    from fipo_trl import data

    loaders = {
        "aime2024": data.load_aime_2024,
        "aime2025": data.load_aime_2025,
        "math500": data.load_math_500,
        "gsm8k": data.load_gsm8k,
    }
    path = Path(name_or_path)
    if name_or_path in loaders:
        name, load = name_or_path, loaders[name_or_path]
    elif path.suffix in (".parquet", ".jsonl", ".json"):
        if not path.is_file():
            raise EvalInputError(f"dataset file {name_or_path!r} does not exist")
        if local_file_is_empty(path):
            raise EvalInputError(f"dataset {path.stem!r} is empty ({name_or_path})")
        name, load = path.stem, functools.partial(data.load_math_dataset, name_or_path)
    else:
        raise EvalInputError(
            f"unknown dataset {name_or_path!r}: use {', '.join(loaders)} or a .parquet/.jsonl/.json file"
        )
    try:
        dataset = load()
    except Exception as error:  # datasets raises many types (ValueError, DatasetNotFoundError, ConnectionError, ...)
        raise EvalInputError(f"cannot load dataset {name_or_path!r}: {str(error).splitlines()[0]}") from error
    check_eval_dataset(dataset, name)
    if answer_format == "boxed":
        dataset = dataset.map(lambda row: {"prompt": boxed_prompt(row["prompt"])}, desc="Asking for \\boxed{}")
    return dataset, name


def check_eval_dataset(dataset: Dataset, name: str) -> Dataset:
    """Raise [`EvalInputError`] unless `dataset` has rows and the `prompt` and `solution` columns the rewards read."""
    missing = [column for column in ("prompt", "solution") if column not in dataset.column_names]
    if missing:
        raise EvalInputError(f"dataset {name!r} lacks column(s) {', '.join(missing)} (has {dataset.column_names})")
    if len(dataset) == 0:
        raise EvalInputError(f"dataset {name!r} is empty")
    return dataset


def resolve_model_path(model_name_or_path: str) -> str:
    """Return the directory to load: `model_name_or_path` itself, or the last `checkpoint-N` of a training output."""
    path = Path(model_name_or_path)
    if not path.exists():
        # not local: a Hub id is the only other thing it can be
        if model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") != 1:
            raise EvalInputError(f"model path {model_name_or_path!r} does not exist")
        return model_name_or_path
    if not path.is_dir():
        raise EvalInputError(f"model path {model_name_or_path!r} is not a directory")
    if (path / "config.json").exists() or (path / "adapter_config.json").exists():
        return str(path)
    last_checkpoint = get_last_checkpoint(str(path))
    if last_checkpoint is None:
        raise EvalInputError(f"{model_name_or_path!r} holds no model (config.json, adapter_config.json, checkpoint-N)")
    return last_checkpoint


def read_adapter_config(model_path: str) -> dict | None:
    """The PEFT `adapter_config.json` of `model_path` as a dict, or `None` for a full model."""
    adapter_config = Path(model_path) / "adapter_config.json"
    return json.loads(adapter_config.read_text()) if adapter_config.exists() else None


def tokenizer_path(model_path: str) -> str:
    """Where the tokenizer lives: the model directory, or the base model of an adapter saved without one."""
    adapter = read_adapter_config(model_path)
    if adapter is None or (Path(model_path) / "tokenizer_config.json").exists():
        return model_path
    return adapter["base_model_name_or_path"]


def load_model_and_tokenizer(model_path: str, dtype: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """
    Load a causal LM for generation: a full model, or a LoRA adapter merged into its base model.

    Args:
        model_path (`str`):
            Output of [`resolve_model_path`].
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weight dtype; `"auto"` keeps the checkpoint's.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`: the model in eval mode, on the visible GPUs if there are
        any, and its tokenizer.
    """
    adapter = read_adapter_config(model_path)
    base_path = model_path if adapter is None else adapter["base_model_name_or_path"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(model_path))
        # device_map="auto" spreads a model too large for one GPU over all visible GPUs
        device_map = "auto" if torch.cuda.is_available() else None
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, device_map=device_map)
    except OSError as error:
        raise EvalInputError(f"cannot load model {base_path!r}: {str(error).splitlines()[0]}") from error
    if adapter is not None:
        from peft import PeftModel

        # merged once up front: generation then runs at the speed of a plain model
        model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
    return model.eval(), tokenizer


def tokenize_prompts(prompts: list, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """
    Token ids of each prompt, rendered as TRL's GRPOTrainer renders them in training.

    Args:
        prompts (`list`):
            Chat prompts (`[{"role": "user", "content": ...}]`), rendered with the chat template and a generation
            prompt, or plain strings, tokenized as they are.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The policy's tokenizer.

    Returns:
        `list[list[int]]`: one list of token ids per prompt, unpadded.
    """
    prompts = list(prompts)  # a datasets Column is not recognised as a batch of conversations
    if isinstance(prompts[0], list):
        if tokenizer.chat_template is None:
            raise EvalInputError("the prompts are chat messages but the tokenizer has no chat template")
        encoded = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
        return [list(ids) for ids in encoded["input_ids"]]
    return [list(ids) for ids in tokenizer(text=prompts)["input_ids"]]


# --- generation -----------------------------------------------------------------------------------------------------


def make_completion(tokenizer: PreTrainedTokenizerBase, token_ids: list[int], truncated: bool) -> dict:
    """One sample as both backends report it: decoded text, length in tokens (EOS included) and truncation."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    return {"completion": text, "num_tokens": len(token_ids), "truncated": truncated}


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends a completion: the generation config's EOS ids and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return sorted(set(configured) | ({tokenizer.eos_token_id} - {None}))


def generate_with_transformers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    k: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    batch_size: int,
    seed: int,
    show_progress: bool = True,
) -> list[list[dict]]:
    """
    Sample `k` completions per prompt with transformers `generate`, `batch_size` sequences at a time.

    The torch RNG is forked, so a call inside training leaves the training random stream untouched. Sampling is
    pure temperature and top-p (top-k off, no repetition penalty), as TRL's GRPOTrainer and vLLM's `SamplingParams`
    sample; the model's own generation defaults are not used.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            Causal LM, already on its device.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        prompt_ids (`list[list[int]]`):
            Output of [`tokenize_prompts`].
        k (`int`):
            Samples per prompt.
        temperature (`float`):
            Sampling temperature.
        top_p (`float`):
            Nucleus sampling threshold.
        max_tokens (`int`):
            Maximum completion length.
        batch_size (`int`):
            Sequences per `generate` call.
        seed (`int`):
            Seed of the forked torch RNG.
        show_progress (`bool`, *optional*, defaults to `True`):
            Whether to show a progress bar over batches.

    Returns:
        `list[list[dict]]`: for each prompt, `k` dicts from [`make_completion`], in sampling order.
    """
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    generation_config = GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        disable_compile=True,
    )
    requests = [(i, j) for i in range(len(prompt_ids)) for j in range(k)]
    completions = [[None] * k for _ in prompt_ids]
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(requests), batch_size), desc="generate", disable=not show_progress):
            batch = requests[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i, _ in batch)
            # left padding by hand: tokenizer.pad needs a pad token, which many base-model tokenizers lack
            input_ids = [[pad_id] * (width - len(prompt_ids[i])) + prompt_ids[i] for i, _ in batch]
            attention_mask = [[0] * (width - len(prompt_ids[i])) + [1] * len(prompt_ids[i]) for i, _ in batch]
            outputs = model.generate(
                input_ids=torch.tensor(input_ids, device=model.device),
                attention_mask=torch.tensor(attention_mask, device=model.device),
                generation_config=generation_config,
            )
            generated = outputs[:, width:]
            is_eos = torch.isin(generated, torch.tensor(eos_ids, device=generated.device))
            for (i, j), ids, eos in zip(batch, generated.tolist(), is_eos.tolist(), strict=True):
                # everything after the first EOS is padding; no EOS means the completion hit max_tokens
                num_tokens = eos.index(True) + 1 if True in eos else len(ids)
                completions[i][j] = make_completion(tokenizer, ids[:num_tokens], truncated=True not in eos)
    return completions


def generate_with_vllm(
    model_path: str,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    k: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int,
) -> list[list[dict]]:
    """
    Sample `k` completions per prompt with vLLM's offline `LLM.generate`; LoRA adapters are served with `LoRARequest`.

    Not run by the test suite (it needs a GPU). Same inputs and outputs as [`generate_with_transformers`].
    """
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    adapter = read_adapter_config(model_path)
    # vLLM's default max_lora_rank is 16; a larger adapter rank must be declared
    lora_kwargs = {} if adapter is None else {"enable_lora": True, "max_lora_rank": max(16, adapter["r"])}
    base_path = model_path if adapter is None else adapter["base_model_name_or_path"]
    # tensor parallel over every visible GPU (a 32B model needs several); pick them with CUDA_VISIBLE_DEVICES
    tensor_parallel_size = torch.cuda.device_count()
    llm = LLM(
        model=base_path,
        tokenizer=tokenizer_path(model_path),
        tensor_parallel_size=tensor_parallel_size,
        seed=seed,
        **lora_kwargs,
    )
    # one seed per prompt: one seeded SamplingParams shared by all prompts would correlate them (vllm#50440)
    sampling_params = [
        SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed + i * k)
        for i in range(len(prompt_ids))
    ]
    outputs = llm.generate(
        [{"prompt_token_ids": ids} for ids in prompt_ids],
        sampling_params,
        lora_request=None if adapter is None else LoRARequest("adapter", 1, model_path),
    )
    return [
        [
            make_completion(tokenizer, list(sample.token_ids), sample.finish_reason == "length")
            for sample in output.outputs
        ]
        for output in outputs
    ]


def vllm_usable() -> bool:
    """vLLM is installed and there is a GPU for it."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


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
        `metrics` (from [`~fipo_trl.eval_metrics.problem_metrics`]) and `samples` (completion, extracted answer,
        reward, correct, num_tokens, truncated).
    """
    from fipo_trl.rewards import (
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


def evaluate(args: EvalArguments) -> dict:
    """
    Run `fipo-trl eval` end to end: load, generate, score, write the JSONL and summary files, print the table.

    Args:
        args ([`EvalArguments`]):
            Parsed arguments.

    Returns:
        `dict`: the summary written to `<output_dir>/<dataset>.summary.json` (run settings and `metrics`).
    """
    model_path = resolve_model_path(args.model_name_or_path)
    dataset, name = load_eval_dataset(args.dataset, args.answer_format)
    backend = args.backend if args.backend != "auto" else "vllm" if vllm_usable() else "transformers"
    if backend == "vllm" and not vllm_usable():
        raise EvalInputError("--backend vllm needs vLLM installed and a GPU")
    sampling = {"k": args.k, "temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens}
    if backend == "vllm":
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(model_path))
        prompt_ids = tokenize_prompts(dataset["prompt"], tokenizer)
        completions = generate_with_vllm(model_path, tokenizer, prompt_ids, **sampling, seed=args.seed)
    else:
        model, tokenizer = load_model_and_tokenizer(model_path, args.dtype)
        prompt_ids = tokenize_prompts(dataset["prompt"], tokenizer)
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


class _EvalArgumentParser(HfArgumentParser):
    # argparse prints usage and exits on a bad flag; raising keeps the CLI's error to one line
    def error(self, message):
        raise EvalInputError(message)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `fipo-trl eval`; returns the exit status (1 with a one-line message on bad inputs)."""
    datasets.disable_progress_bars()  # loading a benchmark takes a second; its bars would bury a one-line error
    parser = _EvalArgumentParser(EvalArguments, prog="fipo-trl eval", description=__doc__.splitlines()[0])
    try:
        (args,) = parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
        evaluate(args)
    except EvalInputError as error:
        print(f"fipo-trl eval: error: {error}", file=sys.stderr)
        return 1
    return 0


# --- during training ------------------------------------------------------------------------------------------------


class MathEvalCallback(TrainerCallback):
    """
    A [`~transformers.TrainerCallback`] that runs the `fipo-trl eval` evaluation on the policy every `eval_steps`
    steps and logs `eval_<name>/avg@k`, `eval_<name>/cons@k`, `eval_<name>/pass@k'` and the length statistics
    through the trainer (wandb shows them as `eval/<name>/...`).

    Every process generates for its share of the problems with the trainer's model, unwrapped as GRPOTrainer unwraps
    it for transformers generation (ZeRO-3 weights gathered, FSDP1 root parameters summoned). Shares are padded to
    equal size, so every process makes the same number of `generate` calls, as synced generation under ZeRO-3 or
    FSDP requires; the per-problem results are then gathered on every process and all of them log the same numbers,
    as the Trainer's own logging does. Generation uses transformers `generate`, not the trainer's vLLM engine, and
    forks the torch RNG so that training randomness is unchanged.

    Usage:
    ```python
    >>> trainer = FIPOTrainer(...)
    >>> trainer.add_callback(MathEvalCallback(trainer, {"aime2024": aime}, eval_steps=5))
    ```

    Args:
        trainer ([`~transformers.Trainer`]):
            The trainer whose model is evaluated and through which the metrics are logged.
        eval_datasets (`dict[str, Dataset]`):
            Name → dataset with `prompt` and `solution` columns (e.g. from `fipo_trl.data`).
        eval_steps (`int`):
            Evaluate when the global step is a multiple of this. Official: every 5 steps (`test_freq`, spec §3.1).
        k (`int`, *optional*, defaults to `32`):
            Samples per problem.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature.
        top_p (`float`, *optional*, defaults to `0.7`):
            Nucleus sampling threshold.
        max_tokens (`int`, *optional*, defaults to `20480`):
            Maximum completion length.
        answer_format (`str`, *optional*, defaults to `"dapo"`):
            `"dapo"` or `"boxed"`, as in [`EvalArguments`].
        batch_size (`int`, *optional*, defaults to `32`):
            Sequences per `generate` call on each process.
        seed (`int`, *optional*, defaults to `42`):
            Sampling seed (the training RNG is left untouched).
    """

    def __init__(
        self,
        trainer: Trainer,
        eval_datasets: dict[str, Dataset],
        eval_steps: int,
        k: int = 32,
        temperature: float = 1.0,
        top_p: float = 0.7,
        max_tokens: int = 20480,
        answer_format: str = "dapo",
        batch_size: int = 32,
        seed: int = 42,
    ):
        check_sampling_arguments(k, temperature, top_p, max_tokens, batch_size)
        if eval_steps < 1:
            raise EvalInputError(f"eval_steps must be >= 1, got {eval_steps}")
        if answer_format not in ("dapo", "boxed"):
            raise EvalInputError(f"answer_format must be 'dapo' or 'boxed', got {answer_format!r}")
        self.trainer = trainer
        self.eval_datasets = {name: check_eval_dataset(ds, name) for name, ds in eval_datasets.items()}
        self.eval_steps = eval_steps
        self.sampling = {"k": k, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.answer_format = answer_format
        self.batch_size = batch_size
        self.seed = seed

    def evaluate_dataset(self, dataset: Dataset, args) -> dict[str, float]:
        """Generate on this process's share of `dataset`, gather every share, and return [`summarize`] of them all."""
        from accelerate.utils import gather_object
        from trl.distributed import DistributedBackend
        from trl.models import unwrap_model_for_generation

        accelerator = self.trainer.accelerator
        tokenizer = self.trainer.processing_class
        with accelerator.split_between_processes(list(range(len(dataset))), apply_padding=True) as indices:
            shard = dataset.select(indices)
            # the same unwrapping as GRPOTrainer's transformers generation (ZeRO-3 gather, FSDP1 root params)
            with (
                unwrap_model_for_generation(
                    self.trainer.model_wrapped,
                    accelerator,
                    gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
                ) as model,
                DistributedBackend(accelerator).summon_full_params(self.trainer.model_wrapped, recurse=False),
            ):
                was_training = model.training
                model.eval()
                completions = generate_with_transformers(
                    model,
                    tokenizer,
                    tokenize_prompts(shard["prompt"], tokenizer),
                    **self.sampling,
                    batch_size=self.batch_size,
                    seed=self.seed,
                    show_progress=accelerator.is_main_process,
                )
                model.train(was_training)
            records = score_completions(shard, completions, self.answer_format, indices=list(indices))
        # only what summarize() reads travels between processes, not the completion texts
        records = [
            {
                "index": r["index"],
                "metrics": r["metrics"],
                "samples": [{"num_tokens": s["num_tokens"], "truncated": s["truncated"]} for s in r["samples"]],
            }
            for r in records
        ]
        # padding repeats the last problem on some processes: keep one record per problem
        unique = {record["index"]: record for record in gather_object(records)}
        return summarize([unique[index] for index in sorted(unique)])

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.eval_steps != 0:
            return
        logs = {}
        for name, dataset in self.eval_datasets.items():
            summary = self.evaluate_dataset(dataset, args)
            # "eval_" is the prefix the wandb/tensorboard integrations rewrite to "eval/"
            logs.update({f"eval_{name}/{key}": value for key, value in summary.items()})
        # transformers' Trainer.log: GRPOTrainer.log would also flush the training metrics pending for the next log
        Trainer.log(self.trainer, logs)
