"""
`fipo-trl train RECIPE.yaml [--field value ...]`: train FIPO from a YAML recipe, the open-r1 way.

The recipe is split by `trl.TrlParser` into three dataclasses: [`FIPOScriptArguments`] (data, rewards, the held-out
check), [`FIPOConfig`] (every `GRPOConfig`/`TrainingArguments` field plus `fipo_*`) and `trl.ModelConfig`. CLI flags
override the YAML. The same command runs on one CPU or under `accelerate launch`:

    fipo-trl train configs/quickstart.yaml
    accelerate launch --config_file zero3.yaml --num_processes 8 -m fipo_trl train RECIPE.yaml --use_vllm
    fipo-trl train configs/quickstart.yaml --resume_from_checkpoint last   # continue from output_dir
"""

import contextlib
import io
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, TrlParser

from .config import FIPOConfig


logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).parent / "assets"
REQUIRED_COLUMNS = ("prompt", "solution")


@dataclass
class FIPOScriptArguments(ScriptArguments):
    """
    Script arguments of `fipo-trl train`: which data, which rewards, and the held-out check around training.

    Parameters:
        dataset_name (`str`, *optional*, defaults to `"synthetic"`):
            `"synthetic"` for the built-in generator ([`fipo_trl.synthetic`]), DAPO-Math-17k (its Hub id or a local
            copy whose name contains "dapo-math", read by [`fipo_trl.data.load_dapo_math`]), or any local file
            (`.json`, `.jsonl`, `.parquet`), folder or Hub dataset whose rows have a `prompt` (string or chat
            messages) and a `solution` (the reference answer) column.
        reward_funcs (`list[str]`, *optional*, defaults to `["dapo_accuracy"]`):
            Reward functions, by name (`dapo_accuracy`, `math_verify`, `soft_overlong`) or dotted import path
            (`my_pkg.rewards.my_reward`). `soft_overlong` is TRL's DAPO overlong penalty with
            `max_completion_len=max_completion_length` and `soft_punish_cache=overlong_buffer_length`. The first one
            is the correctness reward: it is logged as `accuracy` (fraction > 0) and scores the held-out check.
        overlong_buffer_length (`int`, *optional*, defaults to `4096`):
            The buffer of the `soft_overlong` reward (official DAPO/FIPO: 4096 with 20480 completion tokens).
        max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
            Prompts longer than this many tokens lose their beginning (left truncation, official: 2048). `None`
            keeps prompts whole.
        synthetic_task (`str`, *optional*, defaults to `"addition"`):
            Task of the synthetic generator: `"addition"` or `"linear"`.
        synthetic_digits (`int`, *optional*, defaults to `2`):
            Digits per operand of the synthetic problems.
        synthetic_train_size (`int`, *optional*, defaults to `4096`):
            Number of synthetic training problems.
        synthetic_seed (`int`, *optional*, defaults to `0`):
            Seed of the synthetic problems (training and held-out sets never share a prompt).
        heldout_size (`int`, *optional*, defaults to `0`):
            Problems of the held-out set (synthetic, or `dataset_test_split`) on which accuracy is measured before
            and after training, sampling one completion each as in training. `0` skips the check.
        token_view (`bool`, *optional*, defaults to `True`):
            At each logging step, save one completion as HTML with every token coloured by its influence weight
            (under `output_dir/token_view/`, and to wandb when it is on).
        math_eval_datasets (`list[str]`, *optional*, defaults to `[]`):
            Benchmarks evaluated during training with `fipo-trl eval`'s protocol ([`MathEvalCallback`]):
            `aime2024`, `aime2025`, `math500`, `gsm8k` or local problem/answer files. Logged as
            `eval_<name>/avg@k`, `cons@k`, `pass@k`, like the official `val-core/<source>/acc/mean@32`.
        math_eval_steps (`int`, *optional*, defaults to `5`):
            Evaluate every this many optimizer steps (official 32B: `test_freq=5` training steps).
        math_eval_k (`int`, *optional*, defaults to `32`):
            Samples per problem (paper: 32, at temperature 1.0 and top-p 0.7; up to `max_completion_length` tokens).
    """

    dataset_name: str = field(
        default="synthetic",
        metadata={"help": "'synthetic', DAPO-Math-17k (Hub id or copy) or a file/folder/Hub id with prompt+solution."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["dapo_accuracy"],
        metadata={"help": "Reward names (dapo_accuracy, math_verify, soft_overlong) or dotted import paths."},
    )
    overlong_buffer_length: int = field(
        default=4096, metadata={"help": "Buffer of the soft_overlong reward (official DAPO/FIPO: 4096)."}
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Left-truncate prompts to this many tokens (official: 2048); None keeps all."}
    )
    synthetic_task: str = field(default="addition", metadata={"help": "Synthetic task: 'addition' or 'linear'."})
    synthetic_digits: int = field(default=2, metadata={"help": "Digits per operand of the synthetic problems."})
    synthetic_train_size: int = field(default=4096, metadata={"help": "Number of synthetic training problems."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic training/held-out problems."})
    heldout_size: int = field(
        default=0, metadata={"help": "Held-out problems scored before and after training (0 skips the check)."}
    )
    token_view: bool = field(
        default=True, metadata={"help": "Save a per-token influence-weight HTML view at each logging step."}
    )
    math_eval_datasets: list[str] = field(
        default_factory=list,
        metadata={"help": "Benchmarks evaluated during training (aime2024, aime2025, math500, gsm8k or a file)."},
    )
    math_eval_steps: int = field(default=5, metadata={"help": "Evaluate every this many steps (official: 5)."})
    math_eval_k: int = field(default=32, metadata={"help": "Samples per problem of the evaluation (paper: 32)."})


def make_parser():
    """The `TrlParser` of `fipo-trl train`: (FIPOScriptArguments, FIPOConfig, ModelConfig)."""
    return TrlParser((FIPOScriptArguments, FIPOConfig, ModelConfig), prog="fipo-trl train")


class RecipeError(Exception):
    """A problem with the recipe or its inputs, reported as one line without a traceback."""


def parse_recipe(argv):
    """
    Parse `RECIPE.yaml [--field value ...]` (or `--config RECIPE.yaml ...`) into the three dataclasses.

    Raises:
        RecipeError: for an unknown field, a bad value, or a recipe file that cannot be read.
    """
    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--config", *argv]  # `fipo-trl train recipe.yaml` as in open-r1's launch lines
    if "--config" in argv:
        path = argv[argv.index("--config") + 1]
        if not os.path.isfile(path):
            raise RecipeError(f"recipe file not found: {path}")
    stderr = io.StringIO()
    try:
        # argparse prints a page of usage before its one-line error: keep only that line
        with contextlib.redirect_stderr(stderr):
            *parsed, config_unknown, cli_unknown = make_parser().parse_args_and_config(
                argv, return_remaining_strings=True, separate_remaining_strings=True
            )
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        lines = stderr.getvalue().strip().splitlines()
        raise RecipeError(lines[-1] if lines else f"invalid arguments: {argv}") from None
    except (ValueError, TypeError) as exc:
        raise RecipeError(str(exc).splitlines()[0]) from None
    unknown = [arg[2:] for arg in [*config_unknown, *cli_unknown] if arg.startswith("--")]
    if unknown or cli_unknown:
        raise RecipeError(f"unknown recipe field(s): {', '.join(unknown) or ' '.join(cli_unknown)}")
    return tuple(parsed)


def resolve_model_path(name):
    """`fipo_trl/assets/<model>` also works outside the repository, from the installed package."""
    if not os.path.exists(name) and Path(name).parts[:2] == ("fipo_trl", "assets"):
        packaged = ASSETS_DIR.joinpath(*Path(name).parts[2:])
        if packaged.exists():
            return str(packaged)
    return name


def load_tokenizer(model_args):
    """The policy's tokenizer, or a `RecipeError` naming the model path that could not be loaded."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    except (OSError, ValueError) as exc:
        raise RecipeError(
            f"cannot load model_name_or_path={model_args.model_name_or_path!r}: {str(exc).splitlines()[0]}"
        ) from None


def load_datasets(script_args):
    """`(train, heldout)` datasets of the recipe; `heldout` is `None` when `heldout_size` is 0 or there is none."""
    if script_args.dataset_name == "synthetic":
        from .synthetic import train_and_heldout

        train, heldout = train_and_heldout(
            script_args.synthetic_train_size,
            max(script_args.heldout_size, 1),
            seed=script_args.synthetic_seed,
            task=script_args.synthetic_task,
            digits=script_args.synthetic_digits,
        )
        return train, heldout if script_args.heldout_size > 0 else None

    from . import data

    name = script_args.dataset_name
    try:
        # DAPO-Math-17k is stored in verl's layout (answer under reward_model): its loader makes prompt/solution
        if name == data.DAPO_MATH_ID or "dapo-math" in Path(name).name.lower():
            return data.load_dapo_math(name, split=script_args.dataset_train_split), None
        train = data.read_dataset(name, split=script_args.dataset_train_split, name=script_args.dataset_config)
        heldout = None
        if script_args.heldout_size > 0 and not os.path.isfile(name):
            heldout = data.read_dataset(name, split=script_args.dataset_test_split, name=script_args.dataset_config)
            heldout = heldout.select(range(min(script_args.heldout_size, len(heldout))))
    except Exception as exc:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError, ...)
        raise RecipeError(f"cannot load dataset_name={name!r}: {str(exc).splitlines()[0]}") from None
    return train, heldout


def check_columns(dataset, name):
    missing = [column for column in REQUIRED_COLUMNS if column not in dataset.column_names]
    if missing:
        raise RecipeError(
            f"{name} dataset lacks column(s) {missing} (has {dataset.column_names}); rows need 'prompt' and 'solution'"
        )


def with_accuracy_metric(reward_func):
    """`reward_func`, also logging `accuracy` (the fraction of completions it scores above 0) through TRL."""

    def accuracy_logged(completions, log_metric=None, **kwargs):
        rewards = reward_func(completions, log_metric=log_metric, **kwargs)
        scored = [reward for reward in rewards if reward is not None]
        if log_metric is not None and scored:
            log_metric("accuracy", sum(reward > 0 for reward in scored) / len(scored))
        return rewards

    accuracy_logged.__name__ = getattr(reward_func, "__name__", type(reward_func).__name__)  # TRL's metric name
    return accuracy_logged


def get_reward_funcs(script_args, training_args):
    """Reward functions of the recipe, by name or dotted import path; the first one also logs `accuracy`."""
    import importlib

    from . import rewards

    funcs = []
    for name in script_args.reward_funcs:
        if name == "dapo_accuracy":
            funcs.append(rewards.dapo_accuracy_reward)
        elif name == "math_verify":
            funcs.append(rewards.math_verify_reward)
        elif name == "soft_overlong":
            from trl.rewards import get_soft_overlong_punishment

            funcs.append(
                get_soft_overlong_punishment(
                    max_completion_len=training_args.max_completion_length,
                    soft_punish_cache=script_args.overlong_buffer_length,
                )
            )
        elif "." in name:
            module_name, attr = name.rsplit(".", 1)
            sys.path.insert(0, os.getcwd())  # a recipe may name a module next to it, as TRL's grpo script allows
            try:
                funcs.append(getattr(importlib.import_module(module_name), attr))
            except (ImportError, AttributeError) as exc:
                raise RecipeError(f"cannot import reward function {name!r}: {exc}") from None
        else:
            raise RecipeError(
                f"unknown reward function {name!r}: use dapo_accuracy, math_verify, soft_overlong or a dotted path"
            )
    if not funcs:
        raise RecipeError("reward_funcs is empty: name at least one reward function")
    return [with_accuracy_metric(funcs[0]), *funcs[1:]]


def prepare(script_args, training_args, model_args):
    """Check the recipe's inputs and load data, rewards and tokenizer; return a ready [`TrainingJob`]."""
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path or "")
    if not model_args.model_name_or_path:
        raise RecipeError("model_name_or_path is not set")
    tokenizer = load_tokenizer(model_args)
    train, heldout = load_datasets(script_args)
    check_columns(train, "training")
    if heldout is not None:
        check_columns(heldout, "held-out")
    if script_args.max_prompt_length is not None:
        from .data import truncate_prompts

        train = truncate_prompts(train, tokenizer, script_args.max_prompt_length)
    reward_funcs = get_reward_funcs(script_args, training_args)
    eval_datasets = load_eval_datasets(script_args)

    if "wandb" in training_args.report_to:
        try:
            import wandb  # noqa: F401
        except ImportError:
            logger.warning("wandb is not installed: logging to the console only (pip install 'fipo-trl[wandb]').")
            training_args.report_to = [r for r in training_args.report_to if r != "wandb"]
        else:
            os.makedirs(training_args.output_dir, exist_ok=True)
            os.environ.setdefault("WANDB_DIR", training_args.output_dir)  # the run's logs next to its checkpoints

    resume = training_args.resume_from_checkpoint
    if resume in ("last", "true", "True"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise RecipeError(f"resume_from_checkpoint={resume}: no checkpoint-* folder in {training_args.output_dir}")
        training_args.resume_from_checkpoint = last
    elif resume is not None and not os.path.isdir(resume):
        raise RecipeError(f"resume_from_checkpoint={resume!r} is not a folder (use 'last' for output_dir's latest)")

    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    return TrainingJob(script_args, training_args, model_args, tokenizer, train, heldout, reward_funcs, eval_datasets)


def load_eval_datasets(script_args):
    """`{name: dataset}` of `math_eval_datasets`, loaded before training so that a bad name fails at once."""
    from .evaluate import EvalInputError, load_eval_dataset

    datasets = {}
    for name_or_path in script_args.math_eval_datasets:
        try:
            dataset, name = load_eval_dataset(name_or_path)
        except EvalInputError as exc:
            raise RecipeError(f"math_eval_datasets: {exc}") from None
        datasets[name] = dataset
    return datasets


@dataclass
class TrainingJob:
    """Everything a run needs, checked and loaded; `run()` trains, saves and prints the summary."""

    script_args: FIPOScriptArguments
    training_args: FIPOConfig
    model_args: ModelConfig
    tokenizer: object
    train_dataset: object
    heldout_dataset: object
    reward_funcs: list
    eval_datasets: dict

    def run(self):
        import time

        from trl import get_peft_config, get_quantization_config

        from .trainer import FIPOTrainer

        args = self.training_args
        trainer = FIPOTrainer(
            model=self.model_args.model_name_or_path,
            reward_funcs=self.reward_funcs,
            args=args,
            train_dataset=self.train_dataset,
            processing_class=self.tokenizer,
            peft_config=get_peft_config(self.model_args),
            quantization_config=get_quantization_config(self.model_args),
        )
        if self.script_args.token_view:
            from .token_view import TokenViewCallback

            trainer.add_callback(TokenViewCallback(trainer))
        if self.eval_datasets:
            from .evaluate import MathEvalCallback

            trainer.add_callback(
                MathEvalCallback(
                    trainer,
                    self.eval_datasets,
                    eval_steps=self.script_args.math_eval_steps,
                    k=self.script_args.math_eval_k,
                    max_tokens=args.max_completion_length,
                )
            )

        before = after = None
        resumed = args.resume_from_checkpoint is not None
        if self.heldout_dataset is not None and not resumed:
            before = self.heldout_accuracy(trainer)
            trainer.accelerator.print(f"Held-out accuracy before training: {before:.1%}")
        start = time.monotonic()
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        seconds = time.monotonic() - start
        if self.heldout_dataset is not None:
            after = self.heldout_accuracy(trainer)
        trainer.save_model(args.output_dir)
        if trainer.accelerator.is_main_process:
            print_summary(trainer, before, after, seconds, len(self.heldout_dataset or []))
        trainer.end()  # finish trackers (wandb) and the process group

    def heldout_accuracy(self, trainer):
        args = self.training_args
        return sampled_accuracy(
            trainer.model,
            self.tokenizer,
            self.heldout_dataset,
            self.reward_funcs[0],
            accelerator=trainer.accelerator,
            max_new_tokens=args.max_completion_length,
            temperature=args.temperature,
            seed=args.seed,
        )


def sampled_accuracy(
    model, tokenizer, dataset, reward_func, accelerator=None, max_new_tokens=64, temperature=1.0, seed=0, batch_size=64
):
    """
    Avg@1 on `dataset`: the fraction of rows whose one completion, sampled as in training (same temperature, no
    top-p/top-k, prompts rendered as TRL renders them), gets a positive reward from `reward_func`. Generation is
    [`fipo_trl.evaluate`]'s; under several processes each scores a shard and the counts are summed.

    Returns:
        `float`: accuracy in [0, 1].
    """
    import torch

    from .evaluate import generate_with_transformers, tokenize_prompts

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    rows = dataset.select(range(rank, len(dataset), world))
    model = accelerator.unwrap_model(model) if accelerator else model
    was_training = model.training
    model.eval()
    try:
        samples = generate_with_transformers(
            model,
            tokenizer,
            tokenize_prompts(rows["prompt"], tokenizer),
            k=1,
            temperature=temperature,
            top_p=1.0,
            max_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=seed + rank,
            show_progress=False,
        )
    finally:
        model.train(was_training)
    texts = [completions[0]["completion"] for completions in samples]
    if not isinstance(rows["prompt"][0], str):  # chat prompts get chat completions, as in training
        texts = [[{"role": "assistant", "content": text}] for text in texts]
    rewards = reward_func(texts, solution=rows["solution"])
    correct = sum(1 for reward in rewards if reward is not None and reward > 0)
    if world > 1:
        counts = accelerator.reduce(torch.tensor([correct, len(rows)], device=accelerator.device), reduction="sum")
        correct, total = counts.tolist()
        return correct / total
    return correct / max(len(rows), 1)


def print_summary(trainer, before, after, seconds, heldout_size):
    """One screen at the end: accuracy before → after, where the model, checkpoints and logs are."""
    from transformers.trainer_utils import get_last_checkpoint

    args = trainer.args
    out = Path(args.output_dir)
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    lines = ["", "=" * 72, f"FIPO run finished: {trainer.state.global_step} optimizer steps in {took}"]
    if after is not None:
        shown = f"{before:.1%} → {after:.1%}" if before is not None else f"{after:.1%} (resumed run)"
        lines.append(f"Held-out accuracy ({heldout_size} problems, sampled at T={args.temperature}): {shown}")
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    if rewards:
        lines.append(f"Mean training reward: first log {rewards[0]:+.3f}, last log {rewards[-1]:+.3f}")
    lines.append(f"Final model:       {out}")
    checkpoint = get_last_checkpoint(str(out)) if out.is_dir() else None
    if checkpoint:
        lines.append(f"Last checkpoint:   {checkpoint}   (resume: --resume_from_checkpoint last)")
    if (out / "token_view").is_dir():
        lines.append(f"Token view:        {out / 'token_view' / 'latest.html'}   (open in a browser)")
    if "wandb" in args.report_to:
        import wandb

        run_dir = Path(wandb.run.dir).parent if wandb.run is not None else os.environ.get("WANDB_DIR", "./wandb")
        lines.append(f"wandb:             {run_dir}   (offline: `wandb sync` to upload)")
    lines.append("=" * 72)
    print("\n".join(lines))


def main(argv=None):
    """Entry point of `fipo-trl train`; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: fipo-trl train RECIPE.yaml [--field value ...]  (e.g. configs/quickstart.yaml)", file=sys.stderr)
        return 2
    if any(arg in ("-h", "--help") for arg in argv):
        make_parser().print_help()
        return 0
    try:
        job = prepare(*parse_recipe(argv))
    except RecipeError as exc:
        print(f"fipo-trl train: error: {exc}", file=sys.stderr)
        return 2
    job.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
