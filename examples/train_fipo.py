"""
The quickstart by hand: FIPO on the shipped tiny Qwen2 and synthetic additions, with the library's parts in view.

    python examples/train_fipo.py                                               # CPU, ~2 min
    python examples/train_fipo.py --max_steps 20 --learning_rate 1e-4           # any field of the recipe
    accelerate launch --multi_gpu --num_processes 2 examples/train_fipo.py      # same script, data-parallel

The settings are configs/quickstart.yaml's, overridden by `--field value` flags as `fipo-trl train` takes them
(`fipo-trl train configs/quickstart.yaml` does the same with its checks, resume and summary). Start from this file
when you write your own training script (your model, your data with `prompt` and `solution` columns, your rewards).
"""

import os
import sys
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from fipo_trl import FIPOTrainer  # noqa: E402
from fipo_trl.callbacks import TokenViewCallback  # noqa: E402
from fipo_trl.cli.recipe import parse_recipe  # noqa: E402
from fipo_trl.data.synthetic import train_and_heldout  # noqa: E402
from fipo_trl.evaluation.heldout import heldout_check  # noqa: E402
from fipo_trl.model_loading import load_tokenizer, resolve_model_path  # noqa: E402
from fipo_trl.rewards import dapo_accuracy_reward  # noqa: E402
from fipo_trl.run.launch import configure_processes, launch_flags  # noqa: E402


RECIPE = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def main(argv):
    # the recipe, this example's output folder and no wandb, then the command line's flags; the launcher's last
    defaults = ["--output_dir", "outputs/train_fipo_example", "--report_to", "none"]
    script_args, args, model_args = parse_recipe([str(RECIPE), *defaults, *argv, *launch_flags(argv)])
    configure_processes(args)  # says how many processes train, under which engine
    model_path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_path, model_args.model_revision)
    # rows {"prompt": "37+48=?\n", "solution": "85"}; the reward reads the completion's "Answer:" line
    train_dataset, heldout = train_and_heldout(
        script_args.synthetic_train_size, script_args.heldout_size, seed=script_args.synthetic_seed
    )
    trainer = FIPOTrainer(
        model=model_path,
        reward_funcs=dapo_accuracy_reward,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
    )
    trainer.add_callback(TokenViewCallback(trainer))  # HTML under output_dir/token_view/

    def check():  # one sampled completion per held-out problem, at the training temperature
        return heldout_check(
            trainer.model_wrapped, tokenizer, heldout, dapo_accuracy_reward, trainer.accelerator,
            args.max_completion_length, args.temperature, args.seed,
        )  # fmt: skip

    before = check()
    trainer.train()
    after = check()
    trainer.save_model()
    trainer.accelerator.print(
        f"held-out accuracy (T={args.temperature}): {before['accuracy']:.1%} -> {after['accuracy']:.1%}, mean "
        f"completion length {before['mean_length']:.1f} -> {after['mean_length']:.1f} tokens; model in "
        f"{args.output_dir}"
    )
    trainer.end()


if __name__ == "__main__":
    main(sys.argv[1:])
