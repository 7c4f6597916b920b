"""
`fipo-trl train RECIPE.yaml [--field value ...]`: train FIPO from a YAML recipe, the open-r1 way.

The recipe ([`fipo_trl.recipe`]) fills three dataclasses: [`~fipo_trl.recipe.FIPOScriptArguments`] (data, rewards,
the held-out check), [`~fipo_trl.FIPOConfig`] and `trl.ModelConfig`. CLI flags override the YAML. The same command
runs on one CPU or under `accelerate launch`:

    fipo-trl train configs/quickstart.yaml
    accelerate launch --config_file zero3.yaml --num_processes 8 -m fipo_trl train RECIPE.yaml --use_vllm
    fipo-trl train configs/quickstart.yaml --resume_from_checkpoint last   # continue from output_dir

This module only calls the library and reports: data from [`fipo_trl.data`], rewards from [`fipo_trl.rewards`],
callbacks from [`fipo_trl.callbacks`], the held-out check from [`fipo_trl.evaluation`].
"""

import logging
import os
import sys
import time
from pathlib import Path

from .errors import UsageError
from .recipe import make_parser, parse_recipe, short_help


logger = logging.getLogger(__name__)


def main(script_args, training_args, model_args):
    """
    Train FIPO as the recipe says, save the model and print the summary (held-out accuracy and mean completion
    length before → after, where the model, checkpoints and logs are).

    Every input is checked before the model loads: a bad one raises [`UsageError`].
    """
    from trl import get_peft_config, get_quantization_config

    from .callbacks import get_callbacks
    from .data import get_dataset
    from .evaluation import heldout_check, load_eval_datasets
    from .models import load_tokenizer, resolve_model_path
    from .rewards import get_reward_funcs
    from .trainer import FIPOTrainer

    recipe_model = model_args.model_name_or_path
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.model_revision)
    train_dataset, heldout_dataset = get_dataset(script_args, tokenizer)
    reward_funcs = get_reward_funcs(script_args, training_args)
    eval_datasets = load_eval_datasets(script_args.math_eval_datasets)
    set_up_wandb(training_args)
    resolve_resume(training_args)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}

    trainer = FIPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    for callback in get_callbacks(script_args, training_args, trainer, eval_datasets):
        trainer.add_callback(callback)

    def check():  # one sampled completion per held-out problem, as in training
        return heldout_check(
            trainer.model,
            tokenizer,
            heldout_dataset,
            reward_funcs[0],
            accelerator=trainer.accelerator,
            max_new_tokens=training_args.max_completion_length,
            temperature=training_args.temperature,
            seed=training_args.seed,
        )

    before = after = None
    if heldout_dataset is not None and training_args.resume_from_checkpoint is None:
        before = check()
        trainer.accelerator.print(
            f"Held-out accuracy before training: {before['accuracy']:.1%} "
            f"(mean length {before['mean_length']:.1f} tokens)"
        )
    start = time.monotonic()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    seconds = time.monotonic() - start
    if heldout_dataset is not None:
        after = check()
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        write_model_card(trainer, recipe_model, script_args.dataset_name)
        print_summary(trainer, before, after, seconds, len(heldout_dataset or []))
    trainer.end()  # finish trackers (wandb) and the process group
    return trainer


def set_up_wandb(training_args):
    """wandb logs next to the checkpoints; without wandb installed, console logging only."""
    if "wandb" not in training_args.report_to:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        logger.warning("wandb is not installed (pip install wandb): logging to the console only.")
        training_args.report_to = [r for r in training_args.report_to if r != "wandb"]
        return
    os.makedirs(training_args.output_dir, exist_ok=True)
    os.environ.setdefault("WANDB_DIR", training_args.output_dir)  # the run's logs next to its checkpoints


def resolve_resume(training_args):
    """`resume_from_checkpoint: last` becomes `output_dir`'s newest `checkpoint-*`; a missing folder is an error."""
    resume = training_args.resume_from_checkpoint
    if resume in ("last", "true", "True"):
        from transformers.trainer_utils import get_last_checkpoint

        out = training_args.output_dir
        last = get_last_checkpoint(out) if os.path.isdir(out) else None
        if last is None:
            raise UsageError(f"resume_from_checkpoint={resume}: no checkpoint-* folder in {out}")
        training_args.resume_from_checkpoint = last
    elif resume is not None and not os.path.isdir(resume):
        raise UsageError(f"resume_from_checkpoint={resume!r} is not a folder (use 'last' for output_dir's latest)")


def write_model_card(trainer, model_name, dataset_name):
    """
    `output_dir/README.md` by TRL, naming the model trained from: TRL links a Hub id and writes "None" for a local
    folder, so a local base model is named by its path as the recipe gives it. Only a Hub dataset gets a link.
    """
    hub_dataset = dataset_name != "synthetic" and not os.path.exists(dataset_name)
    trainer.create_model_card(
        model_name=Path(trainer.args.output_dir).name, dataset_name=dataset_name if hub_dataset else None
    )
    card = Path(trainer.args.output_dir) / "README.md"
    if card.is_file():
        text = card.read_text().replace("[None](https://huggingface.co/None)", f"`{model_name}` (a local model)")
        card.write_text(text.replace("base_model: None\n", ""))


def print_summary(trainer, before, after, seconds, heldout_size):
    """One screen at the end: held-out accuracy and length before → after; where the model, checkpoints, logs are."""
    from transformers.trainer_utils import get_last_checkpoint

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


def cli(argv=None) -> int:
    """`fipo-trl train RECIPE.yaml [--field value ...]`; a bad input raises [`UsageError`] for `fipo-trl` to report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        raise UsageError("no recipe: fipo-trl train RECIPE.yaml [--field value ...] (e.g. configs/quickstart.yaml)")
    if "--help-all" in argv:
        make_parser().print_help()
        return 0
    if any(arg in ("-h", "--help") for arg in argv):
        print(short_help())
        return 0
    main(*parse_recipe(argv))
    return 0


if __name__ == "__main__":
    from .cli import main as fipo_trl

    sys.exit(fipo_trl(["train", *sys.argv[1:]]))
