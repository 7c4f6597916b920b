"""
The quickstart by hand: FIPO on the shipped tiny Qwen2 and synthetic additions, without the recipe machinery.

    python examples/train_fipo.py                                   # CPU, ~2 min
    accelerate launch --num_processes 2 examples/train_fipo.py      # same script, data-parallel

`fipo-trl train configs/quickstart.yaml` does the same from a YAML recipe; start from this file when you write
your own training script (your model, your data with `prompt` and `solution` columns, your rewards).
"""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from transformers import AutoTokenizer  # noqa: E402

from fipo_trl import FIPOConfig, FIPOTrainer  # noqa: E402
from fipo_trl.callbacks import TokenViewCallback  # noqa: E402
from fipo_trl.data.synthetic import train_and_heldout  # noqa: E402
from fipo_trl.evaluation.heldout import heldout_check  # noqa: E402
from fipo_trl.model_loading import ASSETS_DIR  # noqa: E402
from fipo_trl.rewards import dapo_accuracy_reward  # noqa: E402


def main():
    model_path = str(ASSETS_DIR / "tiny-qwen2-addition")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # rows {"prompt": "37+48=?\n", "solution": "85"}; the reward reads the completion's "Answer:" line
    train_dataset, heldout = train_and_heldout(train_size=4096, heldout_size=256, seed=0)

    args = FIPOConfig(
        output_dir="outputs/train_fipo_example",
        max_steps=400,
        learning_rate=5e-5,
        lr_scheduler_type="constant",
        num_generations=8,
        per_device_train_batch_size=32,
        steps_per_generation=8,  # 8 optimizer steps per generation batch: FIPO acts on the 7 off-policy ones
        max_completion_length=16,
        fipo_clip_high_only=False,  # small-model setting of the paper (7B pilot)
        fipo_safety_threshold=3.0,
        bf16=False,  # CPU
        gradient_checkpointing=False,
        logging_steps=10,
        save_steps=100,
        report_to="none",
    )
    trainer = FIPOTrainer(
        model=model_path,
        reward_funcs=dapo_accuracy_reward,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
    )
    trainer.add_callback(TokenViewCallback(trainer))  # HTML under outputs/train_fipo_example/token_view/

    def check():  # one sampled completion per held-out problem, at the training temperature
        return heldout_check(trainer.model, tokenizer, heldout, dapo_accuracy_reward, trainer.accelerator, 16)

    before = check()
    trainer.train()
    after = check()
    trainer.save_model()
    trainer.accelerator.print(
        f"held-out accuracy (T=1.0): {before['accuracy']:.1%} -> {after['accuracy']:.1%}, mean completion length "
        f"{before['mean_length']:.1f} -> {after['mean_length']:.1f} tokens; model in {args.output_dir}"
    )


if __name__ == "__main__":
    main()
