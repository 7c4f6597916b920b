"""
`fipo-trl train RECIPE.yaml [--field value ...]`: train FIPO from a YAML recipe, the open-r1 way.

The recipe ([`fipo_trl.cli.recipe`]) fills three dataclasses: [`~fipo_trl.cli.recipe.FIPOScriptArguments`]
(data, rewards, the held-out check), [`~fipo_trl.FIPOConfig`] and `trl.ModelConfig`. CLI flags override the YAML. The
same command runs on one CPU or under `accelerate launch`:

    fipo-trl train configs/quickstart.yaml
    accelerate launch --config_file zero3.yaml --num_processes 8 -m fipo_trl train RECIPE.yaml --use_vllm
    fipo-trl train configs/quickstart.yaml --resume_from_checkpoint last   # continue from output_dir
    fipo-trl train RECIPE.yaml --resume_from_checkpoint auto   # continue if output_dir has a checkpoint, else start

A run holds a lock on its `output_dir` ([`fipo_trl.run.lock`]) and stops cleanly on SIGTERM
([`fipo_trl.run.preemption`]); docs/cluster-jobs.md.

This module only calls the library and reports: the checked set-up (data, rewards, resume, the lock) from
[`fipo_trl.run.setup`], callbacks from [`fipo_trl.callbacks`], the held-out check from [`fipo_trl.evaluation.heldout`],
how a run stopped from [`fipo_trl.run.stop`]. Errors are reported by `fipo-trl` ([`fipo_trl.cli`]): exit status 2
before the model loads, 3 for a failure during training (docs/troubleshooting.md).
"""

import functools
import json
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

from ..errors import Preempted, TrainingError, UsageError
from ..run.resume import RunAlreadyComplete, write_completion_marker
from ..run.stop import (
    StoppedTrainingError,
    TrainingInterrupted,
    TrainingPreempted,
    close_progress_bar,
    disk_full_error,
    end_process_group,
    preempted_at,
    sigterm_stops_the_run,
    stopped_at,
)
from .recipe import make_parser, parse_recipe, short_help


def main(script_args, training_args, model_args):
    """
    Train FIPO as the recipe says, save the model and print the summary (held-out accuracy and mean completion
    length before → after, where the model, checkpoints and logs are).

    Every input is checked before the model loads ([`~fipo_trl.run.setup.prepare_run`], which also holds the lock on
    `output_dir`): a bad one raises [`UsageError`]; a failure during training raises [`TrainingError`] saying where
    the run stopped.
    """
    from ..run.launch import configure_processes
    from ..run.setup import prepare_run

    try:
        configure_processes(training_args)  # FSDP without a GPU, the process count checked and announced
        with prepare_run(script_args, training_args, model_args) as run:
            return train_and_report(run, script_args, training_args, model_args)
    except BaseException:
        end_process_group()  # a failure, Ctrl-C or SIGTERM: the success path ends it in trainer.end()
        raise


def train_and_report(run, script_args, training_args, model_args):
    """The part of [`main`] after the set-up: build the trainer, check, train, check again, save, summarize."""
    trainer, preemption = build_trainer(run, script_args, training_args, model_args)
    check = functools.partial(heldout_accuracy, trainer, run)
    before = after = None
    if run.heldout_dataset is not None and run.resume_from_checkpoint is None:
        before = check()
        trainer.accelerator.print(
            f"Held-out accuracy before training: {before['accuracy']:.1%} "
            f"(mean length {before['mean_length']:.1f} tokens)"
        )
    start = time.monotonic()
    run_training(trainer, preemption, run.resume_from_checkpoint)
    seconds = time.monotonic() - start
    if run.heldout_dataset is not None:
        after = check()
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        write_model_card(trainer, run.recipe_model, script_args.dataset_name, run.train_dataset[0]["prompt"])
        write_completion_marker(training_args, trainer.state)  # last: the run's end is on disk
        print_summary(trainer, before, after, seconds, len(run.heldout_dataset or []))
    trainer.end()  # finish trackers (wandb) and the process group
    return trainer


def build_trainer(run, script_args, training_args, model_args):
    """The run's `RecipeTrainer` (cli/recipe_classes.py) with the CLI's callbacks, and its [`PreemptionCallback`]."""
    from trl import get_peft_config, get_quantization_config

    from ..callbacks import get_callbacks
    from ..rewards.spread import RewardSpreadCallback
    from ..run.checkpoints import ResumedSettingsCallback
    from ..run.preemption import PreemptionCallback
    from .recipe_classes import RecipeTrainer

    trainer = RecipeTrainer(
        model=run.model_name_or_path,
        reward_funcs=run.reward_funcs,
        args=training_args,
        train_dataset=run.train_dataset,
        processing_class=run.tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    if run.resume_from_checkpoint is not None:
        trainer.add_callback(ResumedSettingsCallback(run.resume_from_checkpoint))
    # before get_callbacks' CheckpointMarkerCallback, which must see a save decided on SIGTERM
    preemption = PreemptionCallback(trainer.accelerator, script_args.preemption_grace_period)
    trainer.add_callback(preemption)
    for callback in get_callbacks(script_args, training_args, trainer, run.eval_datasets):
        trainer.add_callback(callback)
    trainer.add_callback(RewardSpreadCallback())  # last: the console has shown the log of the step it stops at
    return trainer, preemption


def heldout_accuracy(trainer, run):
    """The held-out check on the trainer's model: one sampled completion per problem, as in training."""
    from ..evaluation.heldout import heldout_check

    args = trainer.args
    return heldout_check(
        trainer.model_wrapped,
        run.tokenizer,
        run.heldout_dataset,
        run.reward_funcs[0],
        accelerator=trainer.accelerator,
        gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        max_new_tokens=args.max_completion_length,
        temperature=args.temperature,
        seed=args.seed,
    )


def run_training(trainer, preemption, resume_from_checkpoint):
    """
    `trainer.train()`, with each way it can stop reported as one line: a [`TrainingError`] (a reward that raised or
    never scored, dynamic sampling out of rounds) again with where it stopped, Ctrl-C as [`TrainingInterrupted`],
    SIGTERM as [`TrainingPreempted`].
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    preemption.install()
    try:
        with logging_redirect_tqdm():  # a warning during training gets a line of its own, not the progress bar's
            trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    # a reward that raised or never scored, dynamic sampling out of rounds: say where the run can go on from. A
    # UsageError raised once training runs (a user's reward checking its input) is a failure of the run too: exit 3
    except (TrainingError, UsageError) as error:
        close_progress_bar(trainer)
        after_step = error.after_step if isinstance(error, TrainingError) else None
        raise StoppedTrainingError(str(error), *stopped_at(trainer, after_step)) from error
    except (OSError, RuntimeError) as error:  # torch and safetensors report a full disk as their own errors
        full = disk_full_error(error, trainer.args.output_dir)
        if full is None:
            raise
        close_progress_bar(trainer)
        raise StoppedTrainingError(full, *stopped_at(trainer)) from error
    except KeyboardInterrupt as interrupt:
        close_progress_bar(trainer)
        if preemption.preempted:
            raise TrainingPreempted(*preempted_at(trainer, preemption, interrupt)) from None
        raise TrainingInterrupted(*stopped_at(trainer)) from None
    finally:
        preemption.uninstall()
    if preemption.preempted:  # stopped at a step's end: no held-out check, no final model, no summary
        close_progress_bar(trainer)
        raise TrainingPreempted(*preempted_at(trainer, preemption, None))


def write_model_card(trainer, model_name, dataset_name, prompt):
    """
    `output_dir/README.md` by TRL, naming the model trained from: TRL links a Hub id and writes "[None](...)" for a
    local folder, so a local base model is named by its path as the recipe gives it. Only a Hub dataset gets a link.
    TRL's quick start loads `model="None"` (no Hub id) with a chat question: it is replaced by one that loads
    `output_dir` and asks one of the training prompts, as text or as chat messages, as the model was trained. The
    card is edited as a `huggingface_hub.ModelCard`: its metadata header stays as TRL wrote it.
    """
    import re

    from huggingface_hub import ModelCard

    hub_dataset = dataset_name != "synthetic" and not os.path.exists(dataset_name)
    trainer.create_model_card(
        model_name=Path(trainer.args.output_dir).name, dataset_name=dataset_name if hub_dataset else None
    )
    path = Path(trainer.args.output_dir) / "README.md"
    if not path.is_file():
        return
    card = ModelCard.load(path)
    if card.data.base_model is None:  # TRL's template links the base model as "[None](https://huggingface.co/None)"
        card.text = card.text.replace("[None](https://huggingface.co/None)", f"`{model_name}` (a local model)")
    quick_start = quick_start_code(trainer.args.output_dir, prompt, trainer.args.max_completion_length)
    block = re.compile(r"(## Quick start\n\n)```python\n.*?```", flags=re.S)
    card.text = block.sub(lambda match: match.group(1) + quick_start, card.text, count=1)
    card.save(path)


def quick_start_code(model_dir, prompt, max_new_tokens) -> str:
    """The model card's example: `pipeline` on `model_dir` with `prompt`, a training prompt (text or chat messages)."""
    lines = [
        "```python",
        "from transformers import pipeline",
        "",
        f"prompt = {json.dumps(prompt)}",
        f'generator = pipeline("text-generation", model={json.dumps(str(model_dir))})',
        f"output = generator(prompt, max_new_tokens={max_new_tokens}, return_full_text=False)[0]",
        'print(output["generated_text"])',
        "```",
    ]
    return "\n".join(lines)


def print_summary(trainer, before, after, seconds, heldout_size):
    """One screen at the end: held-out accuracy and length before → after; where the model, checkpoints, logs are."""
    from ..run.checkpoints import last_complete_checkpoint
    from ..run.launch import describe

    args = trainer.args
    out = Path(args.output_dir)
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    lines = ["", "=" * 72, f"FIPO run finished: {trainer.state.global_step} optimizer steps in {took}"]
    if after is not None:
        sampled = f"{heldout_size} problems, sampled at T={args.temperature}"
        if before is None:
            accuracy, length = f"{after['accuracy']:.1%} (resumed run)", f"{after['mean_length']:.1f}"
        else:
            accuracy = f"{before['accuracy']:.1%} → {after['accuracy']:.1%}"
            length = f"{before['mean_length']:.1f} → {after['mean_length']:.1f}"
        lines.append(f"Held-out accuracy ({sampled}): {accuracy}")
        lines.append(f"Held-out mean completion length (tokens): {length}")
    # a batch that no reward scored logs a NaN (None in log_history) reward: it is no first or last value
    rewards = [
        (entry["step"], entry["reward"])
        for entry in trainer.state.log_history
        if isinstance(entry.get("reward"), (int, float)) and math.isfinite(entry["reward"])
    ]
    if rewards:
        (first_step, first), (last_step, last) = rewards[0], rewards[-1]
        lines.append(
            f"Mean training reward: first log {first:+.3f} (step {first_step}), last {last:+.3f} (step {last_step})"
        )
    lines.append(f"Trained on:        {describe(trainer.accelerator)}")  # as announced at the start
    lines.append(f"Final model:       {out}")
    checkpoint = last_complete_checkpoint(out, quiet=True)
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


def cli(argv=None) -> int:
    """`fipo-trl train RECIPE.yaml [--field value ...]`; a bad input raises [`UsageError`] for `fipo-trl` to report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        raise UsageError("no recipe: fipo-trl train RECIPE.yaml [--field value ...] (e.g. configs/quickstart.yaml)")
    if "--help-all" in argv:
        make_parser().print_help()
        return 0
    if any(arg in ("-h", "--help") for arg in argv):
        print(short_help(None if argv[0].startswith("-") else argv[0]))  # with a recipe: its own values first
        return 0
    from ..run.launch import launch_flags

    # TRL 1.16 reads transformers' deprecated `is_gradient_checkpointing` at every generation: no recipe can change it
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # before the config is built: it sets accelerate's state up and sizes batches by the world size it sees
    script_args, training_args, model_args = parse_recipe([*argv, *launch_flags(argv)])
    command = shlex.join(["fipo-trl", "train", *without_resume_flag(argv), "--resume_from_checkpoint", "last"])
    try:
        with sigterm_stops_the_run():  # before and after training; PreemptionCallback's handler during it
            main(script_args, training_args, model_args)
    except RunAlreadyComplete as complete:  # a requeue after the end: nothing to do, which is success
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"fipo-trl train: {complete}")
        return 0
    except StoppedTrainingError as error:
        if error.checkpoint is None:
            raise
        raise TrainingError(f"{error.message} ({error.where}; resume with: {command})") from error
    except TrainingInterrupted as interrupt:
        if interrupt.checkpoint is None:
            raise
        stop = Preempted if isinstance(interrupt, Preempted) else KeyboardInterrupt
        raise stop(f"{interrupt}; resume with: {command}") from None
    return 0


def without_resume_flag(argv):
    """`argv` without its `--resume_from_checkpoint VALUE` (or `=VALUE`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume_from_checkpoint":
            skip = True
        elif not arg.startswith("--resume_from_checkpoint="):
            kept.append(arg)
    return kept


if __name__ == "__main__":
    from . import main as fipo_trl

    sys.exit(fipo_trl(["train", *sys.argv[1:]]))
