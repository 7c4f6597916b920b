"""What dynamic sampling costs and buys on the quickstart task: generation per optimizer step, filter on vs off.

    python benchmarks/dynamic_sampling.py [--steps 32] [--threads 1]

Trains the shipped tiny model (`fipo_trl/assets/tiny-qwen2-addition`) on the quickstart's addition problems with the
quickstart's geometry (`configs/quickstart.yaml`: 32 prompts × 8 completions per generation batch, 8 optimizer steps
each), three times from the same start: the filter off; on with rounds of one generation batch (32 prompts); on with
rounds of 4 generation batches (128 prompts, the official 2048 : 512 ratio). For each it prints the completions
generated and the time spent generating and scoring (`_generate_and_score_completions`, which includes the old
log-prob pass) per optimizer step, their ratio to the filter off, the rounds per generation batch, the fraction of
generated groups kept, and the fraction of trained groups that carry signal (non-zero reward variance).
"""

import argparse
import math
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import PrinterCallback  # noqa: E402

from fipo_trl.cli.recipe_classes import RecipeConfig, RecipeTrainer  # noqa: E402
from fipo_trl.data.synthetic import synthetic_dataset  # noqa: E402
from fipo_trl.rewards import dapo_accuracy_reward  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_FIELDS = (
    "seed", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "num_generations",
    "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation", "max_completion_length",
    "temperature", "fipo_clip_high_only", "fipo_safety_threshold", "bf16", "gradient_checkpointing",
)  # fmt: skip


class TimedTrainer(RecipeTrainer):  # the trainer of `fipo-trl train`: FIPO with dynamic sampling
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generation_seconds, self.completions_generated = 0.0, 0

    def _generate_and_score_completions(self, inputs):
        start = time.perf_counter()
        output = super()._generate_and_score_completions(inputs)
        self.generation_seconds += time.perf_counter() - start
        return output

    def _generate(self, prompts):
        if self._replay is None:  # a real generation, not the replay of the kept rows
            self.completions_generated += len(prompts)
        return super()._generate(prompts)


def run(recipe, dataset, steps, out_dir, **dynamic):
    fields = {key: recipe[key] for key in QUICKSTART_FIELDS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = RecipeConfig(
            output_dir=out_dir, use_cpu=True, report_to="none", save_strategy="no", max_steps=steps,
            logging_steps=recipe["steps_per_generation"], disable_tqdm=True, **fields, **dynamic,
        )  # fmt: skip
        trainer = TimedTrainer(
            model=str(ROOT / recipe["model_name_or_path"]),
            reward_funcs=dapo_accuracy_reward,
            args=args,
            train_dataset=dataset,
        )
        trainer.remove_callback(PrinterCallback)  # one log per generation batch, kept in log_history only
        start = time.perf_counter()
        trainer.train()
    seconds = time.perf_counter() - start
    logs = trainer.state.log_history
    generation_logs = [h for h in logs if "frac_reward_zero_std" in h]
    return {
        "completions": trainer.completions_generated / steps,
        "generation_s": trainer.generation_seconds / steps,
        "total_s": seconds / steps,
        "rounds": statistics.mean(h.get("num_gen_batches", 1) for h in generation_logs),
        "kept": 1 - statistics.mean(h.get("dynamic_sampling/filtered_frac", float("nan")) for h in generation_logs),
        "signal": 1 - statistics.mean(h["frac_reward_zero_std"] for h in generation_logs),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps per run (8 per generation batch)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    recipe = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    dataset = synthetic_dataset(
        recipe["synthetic_train_size"], seed=recipe["synthetic_seed"], task=recipe["synthetic_task"],
        digits=recipe["synthetic_digits"],
    )  # fmt: skip
    kept = recipe["per_device_train_batch_size"] * recipe["steps_per_generation"] // recipe["num_generations"]
    variants = {
        "filter off": {},
        f"on, rounds of {kept} prompts": {"dynamic_sampling": True},
        f"on, rounds of {4 * kept} prompts": {
            "dynamic_sampling": True,
            "dynamic_sampling_prompts_per_round": 4 * kept,
        },
    }
    load = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dynamic in variants.items():
            results[name] = run(recipe, dataset, options.steps, tmp, **dynamic)
    off = results["filter off"]
    print(f"quickstart task, {options.steps} optimizer steps per run, torch threads {options.threads}")
    print(f"1-minute load average before the runs: {load:.2f}, after: {os.getloadavg()[0]:.2f}")
    header = (
        f"{'variant':<28} {'compl./step':>11} {'ratio':>6} {'gen s/step':>10} {'ratio':>6} {'total s/step':>12} "
        f"{'rounds':>6} {'kept':>6} {'trained w/ signal':>17}"
    )
    print(header)
    for name, r in results.items():
        kept_text = "—" if math.isnan(r["kept"]) else f"{r['kept']:.1%}"
        print(
            f"{name:<28} {r['completions']:>11.0f} {r['completions'] / off['completions']:>5.2f}× "
            f"{r['generation_s']:>10.3f} {r['generation_s'] / off['generation_s']:>5.2f}× {r['total_s']:>12.3f} "
            f"{r['rounds']:>6.2f} {kept_text:>6} {r['signal']:>17.1%}"
        )


if __name__ == "__main__":
    main()
