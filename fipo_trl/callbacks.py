"""The callbacks of a FIPO run, and [`get_callbacks`], which attaches those a `fipo-trl train` recipe asks for.

1. [`TokenViewCallback`]: at each logging step, one training completion as HTML with every token coloured by its
   influence weight (rendering in [`fipo_trl.token_view`]).
2. [`MathEvalCallback`]: `fipo-trl eval`'s evaluation of the policy during training (every process generates a
   share, the results are gathered), logged as `eval_<name>/avg@k` and so on.
3. [`BriefProgressCallback`] and [`BriefPrinterCallback`]: transformers' progress bar and printer, showing only
   [`BRIEF_METRICS`] of each training log (`console_metrics: brief`); wandb and `log_history` keep every metric.
"""

import math
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback

from .core import UNCLIPPED_WEIGHT_MAX, weight_bounds
from .errors import UsageError
from .evaluation.datasets import check_eval_dataset
from .evaluation.generation import Sampling, check_batch_size, score_on_processes
from .evaluation.scoring import score_completions, summarize
from .official import MAX_COMPLETION_LENGTH
from .run.checkpoints import CheckpointMarkerCallback
from .token_view import render_token_view


def get_callbacks(script_args, training_args, trainer, eval_datasets=None) -> list[TrainerCallback]:
    """
    The callbacks of a recipe: [`TokenViewCallback`] when `token_view` is on, [`MathEvalCallback`] when
    `math_eval_datasets` names benchmarks, with `console_metrics: brief` the brief twin of the trainer's console
    callback (which is popped from `trainer` here: [`BriefProgressCallback`], or [`BriefPrinterCallback`] with
    `disable_tqdm`), and always, last, [`~fipo_trl.run.checkpoints.CheckpointMarkerCallback`] (a checkpoint looks
    complete only once its save has finished).

    Args:
        script_args ([`~fipo_trl.cli.recipe.FIPOScriptArguments`]):
            `token_view`, `math_eval_steps`, `math_eval_k`, `console_metrics`.
        training_args ([`~fipo_trl.FIPOConfig`]):
            `max_completion_length` bounds the evaluation's completions.
        trainer ([`FIPOTrainer`]):
            The trainer the callbacks read from and log through.
        eval_datasets (`dict[str, Dataset]`, *optional*):
            The loaded `math_eval_datasets` ([`~fipo_trl.evaluation.datasets.load_eval_datasets`], called before
            the model loads so that a bad name fails at once).
    """
    callbacks = []
    if script_args.console_metrics == "brief":
        for full, brief in ((ProgressCallback, BriefProgressCallback), (PrinterCallback, BriefPrinterCallback)):
            if trainer.pop_callback(full) is not None:
                callbacks.append(brief())
    if script_args.token_view:
        callbacks.append(TokenViewCallback(trainer))
    if eval_datasets:
        callbacks.append(
            MathEvalCallback(
                trainer,
                eval_datasets,
                eval_steps=script_args.math_eval_steps,
                k=script_args.math_eval_k,
                max_tokens=training_args.max_completion_length,
            )
        )
    # last, so that its on_save runs after every other callback that writes into a checkpoint
    callbacks.append(CheckpointMarkerCallback())
    return callbacks


# loss, reward, accuracy, length, policy drift (mean |Δ|), mean FIPO weight, PPO clip fraction: docs/fipo.md §5.1
BRIEF_METRICS = (
    "loss",
    "reward",
    "accuracy",
    "completions/mean_length",
    "fipo/abs_log_ratio_mean",
    "fipo/weight_mean",
    "clip_ratio/region_mean",
)


def brief_logs(logs: dict, global_step: int) -> dict:
    """
    The step and [`BRIEF_METRICS`] of a training log (one with a `loss`); any other log (evaluation results, the
    end-of-training summary) whole.
    """
    if "loss" not in logs:
        return logs
    return {"step": global_step, **{key: logs[key] for key in BRIEF_METRICS if key in logs}}


class BriefProgressCallback(ProgressCallback):
    """transformers' [`~transformers.ProgressCallback`] (a tqdm bar) that writes [`brief_logs`] below the bar."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=brief_logs(logs, state.global_step), **kwargs)


class BriefPrinterCallback(PrinterCallback):
    """transformers' [`~transformers.PrinterCallback`] (one printed line per log, `disable_tqdm`) of [`brief_logs`]."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        # a copy: PrinterCallback pops `total_flos` from the dict every other callback also receives
        super().on_log(args, state, control, logs=dict(brief_logs(logs, state.global_step)), **kwargs)


class TokenViewCallback(TrainerCallback):
    """
    At each logging step, render the trainer's latest `fipo_token_view` (one off-policy completion) to
    `<output_dir>/token_view/step_XXXXXX.html` and `latest.html`, and log it to wandb as `train/token_view`.

    Args:
        trainer ([`FIPOTrainer`]):
            The trainer whose `fipo_token_view` is read; its `processing_class` turns ids into text.
        output_dir (`str`, *optional*):
            Where to write; defaults to `trainer.args.output_dir`.
    """

    def __init__(self, trainer, output_dir=None):
        self.trainer = trainer
        self.output_dir = Path(output_dir or trainer.args.output_dir) / "token_view"
        self._last_rendered = None
        lower, upper = weight_bounds(trainer.args.fipo_clip_range, trainer.args.fipo_clip_high_only)
        # High-only mode has no lower bound below 1; the unclipped mode caps at 10: show a symmetric scale
        upper = min(upper, UNCLIPPED_WEIGHT_MAX)
        self.weight_range = (lower if lower is not None and lower < 1 else max(2 - upper, 0.0), upper)

    def on_log(self, args, state, control, logs=None, **kwargs):
        view = self.trainer.fipo_token_view
        if not state.is_world_process_zero or view is None or view is self._last_rendered:
            return
        self._last_rendered = view
        tokenizer = kwargs.get("processing_class") or self.trainer.processing_class
        ids = view["completion_ids"].cpu().tolist()
        tokens = [tokenizer.decode([token_id]) for token_id in ids]
        weights = view["weights"].float().cpu().tolist()
        log_ratios = view["log_ratio"].float().cpu().tolist()
        advantage = float(view["advantage"].float().cpu())
        page = render_token_view(
            tokens,
            weights,
            log_ratios,
            advantage if math.isfinite(advantage) else float("nan"),
            weight_range=self.weight_range,
            title=f"FIPO token influence, step {state.global_step}",
            prompt=tokenizer.decode(view["prompt_ids"].cpu().tolist(), skip_special_tokens=False),
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / f"step_{state.global_step:06d}.html").write_text(page, encoding="utf-8")
        (self.output_dir / "latest.html").write_text(page, encoding="utf-8")
        if "wandb" in args.report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({"train/token_view": wandb.Html(page), "train/global_step": state.global_step})


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
            Name → dataset with `prompt` and `solution` columns (e.g. from `fipo_trl.data.math_datasets`).
        eval_steps (`int`):
            Evaluate every this many global steps. Official: every 5 steps (`test_freq`, docs/fipo.md §3.1).
        k (`int`, *optional*, defaults to `32`):
            Samples per problem.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature.
        top_p (`float`, *optional*, defaults to `0.7`):
            Nucleus sampling threshold.
        max_tokens (`int`, *optional*, defaults to `20480`):
            Maximum completion length.
        answer_format (`str`, *optional*, defaults to `"dapo"`):
            `"dapo"` or `"boxed"`, as in `fipo-trl eval`.
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
        max_tokens: int = MAX_COMPLETION_LENGTH,
        answer_format: str = "dapo",
        batch_size: int = 32,
        seed: int = 42,
    ):
        self.sampling = Sampling(k=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        check_batch_size(batch_size)
        if eval_steps < 1:
            raise UsageError(f"eval_steps must be >= 1, got {eval_steps}")
        if answer_format not in ("dapo", "boxed"):
            raise UsageError(f"answer_format must be 'dapo' or 'boxed', got {answer_format!r}")
        self.trainer = trainer
        self.eval_datasets = {name: check_eval_dataset(ds, name) for name, ds in eval_datasets.items()}
        self.eval_steps = eval_steps
        self.answer_format = answer_format
        self.batch_size = batch_size

    def evaluate_dataset(self, dataset: Dataset, args) -> dict[str, float]:
        """Generate on this process's share of `dataset`, gather every share, and summarize them all."""
        records = score_on_processes(
            self.trainer.model_wrapped,
            self.trainer.processing_class,
            dataset,
            self._score_rows,
            self.sampling,
            self.batch_size,
            accelerator=self.trainer.accelerator,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
            show_progress=self.trainer.accelerator.is_main_process,
        )
        return summarize(records)

    def _score_rows(self, rows, indices, samples):
        # only what summarize() reads travels between processes, not the completion texts
        return [
            {
                "metrics": record["metrics"],
                "samples": [{"num_tokens": s["num_tokens"], "truncated": s["truncated"]} for s in record["samples"]],
            }
            for record in score_completions(rows, samples, self.answer_format, indices)
        ]

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
