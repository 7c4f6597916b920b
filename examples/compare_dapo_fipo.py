"""
DAPO vs FIPO on the quickstart task, from the same shipped model, over several seeds.

    python examples/compare_dapo_fipo.py                               # 3 seeds × 2 methods, ~7 min on 2 cores
    python examples/compare_dapo_fipo.py --seeds 0 --max_steps 100     # a quick look
    python examples/compare_dapo_fipo.py --learning_rate 1e-4          # other flags override the recipe

What is compared:
1. DAPO is TRL's `GRPOTrainer` with `loss_type="dapo"`, dual clip `delta=10`, clip-higher `epsilon_high=0.28`, no KL,
   dropout off; FIPO is `FIPOTrainer`. Every other setting comes from the same recipe (`configs/quickstart.yaml`),
   including `steps_per_generation=8`: each generation batch feeds 8 optimizer steps, so both methods train
   off-policy on 7 of them, and FIPO's influence weights act there (on the first step FIPO *is* DAPO).
2. Same seed, same start: both methods see the same first generation batch.
3. It is a tiny model on a task it half knows: the curves show how the two losses behave, not which one wins on
   real reasoning (the paper's claim is about long chains of thought, which this task does not have).

Writes to `--output_dir`: `compare.png` (reward, accuracy, mean response length and influence weight per step; mean
over seeds, min–max band), `compare.csv` (one row per method, seed and logging step) and `compare_summary.csv`
(held-out accuracy before and after, per method and seed).
"""

import argparse
import csv
import os
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser  # noqa: E402

from fipo_trl import FIPOTrainer  # noqa: E402
from fipo_trl.train import FIPOScriptArguments, parse_recipe, prepare  # noqa: E402


RECIPE = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
METHODS = ("dapo", "fipo")
CURVES = {  # CSV column: logged key
    "reward": "reward",
    "accuracy": "accuracy",
    "mean_length": "completions/mean_length",
    "weight_mean": "fipo/weight_mean",
    "weight_min": "fipo/weight_min",
    "weight_max": "fipo/weight_max",
    "abs_log_ratio_mean": "fipo/abs_log_ratio_mean",
    "clip_ratio": "clip_ratio/region_mean",
}


def dapo_args(argv):
    """The recipe as a `GRPOConfig` for DAPO: FIPO's loss settings without its influence weights."""
    parser = TrlParser((FIPOScriptArguments, GRPOConfig, ModelConfig))
    _, args, _, unknown = parser.parse_args_and_config(argv, return_remaining_strings=True)
    unknown_fields = [arg for arg in unknown if arg.startswith("--") and not arg.startswith("--fipo_")]
    if unknown_fields:
        raise ValueError(f"recipe fields unknown to GRPOConfig: {unknown_fields}")
    # FIPOConfig's defaults (official 32B script) where GRPOConfig's differ, so only the weights differ
    args.loss_type, args.delta, args.epsilon, args.epsilon_high, args.beta = "dapo", 10.0, 0.2, 0.28, 0.0
    args.disable_dropout = True
    return args


def train_one(method, seed, argv):
    """Train one method from the recipe; return (log rows, held-out accuracy before, after, wall seconds)."""
    script_args, training_args, model_args = parse_recipe(argv)
    if method == "dapo":
        training_args = dapo_args(argv)
    job = prepare(script_args, training_args, model_args)
    trainer_cls = FIPOTrainer if method == "fipo" else GRPOTrainer
    trainer = trainer_cls(
        model=model_args.model_name_or_path,
        reward_funcs=job.reward_funcs,
        args=training_args,
        train_dataset=job.train_dataset,
        processing_class=job.tokenizer,
    )

    before = job.heldout_accuracy(trainer)  # seed = training_args.seed, the same for both methods
    start = time.monotonic()
    trainer.train()
    wall = time.monotonic() - start
    after = job.heldout_accuracy(trainer)
    rows = []
    for entry in trainer.state.log_history:
        if "loss" not in entry:
            continue
        row = {"method": method, "seed": seed, "step": entry["step"]}
        row.update({column: entry.get(key) for column, key in CURVES.items()})
        rows.append(row)
    return rows, before, after, wall


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("reward", "mean reward (+1 right, −1 wrong)"),
        ("accuracy", "training accuracy (sampled, T=1)"),
        ("mean_length", "mean response length (tokens)"),
        ("weight_mean", "influence weight f (mean; band: min–max)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    colours = {"dapo": "tab:blue", "fipo": "tab:red"}
    for ax, (column, title) in zip(axes, panels, strict=True):
        for method in METHODS:
            by_step = {}
            for row in rows:
                if row["method"] == method and row[column] is not None:
                    by_step.setdefault(row["step"], []).append(row)
            if not by_step and column == "weight_mean":
                steps = sorted({row["step"] for row in rows})
                ax.plot(steps, [1.0] * len(steps), color=colours[method], label=f"{method.upper()} (f ≡ 1)")
                continue
            steps = sorted(by_step)
            values = [[r[column] for r in by_step[s]] for s in steps]
            mean = [sum(v) / len(v) for v in values]
            ax.plot(steps, mean, color=colours[method], label=f"{method.upper()} (mean of {len(values[0])} seeds)")
            if column == "weight_mean":
                low = [min(r["weight_min"] for r in by_step[s]) for s in steps]
                high = [max(r["weight_max"] for r in by_step[s]) for s in steps]
            else:
                low, high = [min(v) for v in values], [max(v) for v in values]
            ax.fill_between(steps, low, high, color=colours[method], alpha=0.15)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("DAPO vs FIPO on the quickstart (tiny Qwen2, two-digit addition)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_steps", type=int, default=400)
    parser.add_argument("--heldout_size", type=int, default=256)
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/compare_dapo_fipo"))
    cli, overrides = parser.parse_known_args()  # anything else overrides the recipe, e.g. --learning_rate 1e-4

    rows, summary = [], []
    for seed in cli.seeds:
        for method in METHODS:
            argv = [
                *["--config", cli.recipe],
                *["--seed", str(seed), "--max_steps", str(cli.max_steps), "--report_to", "none"],
                *["--output_dir", str(cli.output_dir / f"{method}-seed{seed}"), "--save_strategy", "no"],
                *["--token_view", "false", "--disable_tqdm", "true", "--heldout_size", str(cli.heldout_size)],
                *overrides,
            ]
            run_rows, before, after, wall = train_one(method, seed, argv)
            rows += run_rows
            summary.append(
                {
                    "method": method,
                    "seed": seed,
                    "heldout_before": before,
                    "heldout_after": after,
                    "final_train_accuracy": [r["accuracy"] for r in run_rows if r["accuracy"] is not None][-1],
                    "final_mean_length": [r["mean_length"] for r in run_rows if r["mean_length"] is not None][-1],
                    "train_seconds": round(wall, 1),
                }
            )
            print(f"{method} seed {seed}: held-out {before:.1%} -> {after:.1%} in {wall:.0f} s", flush=True)

    cli.output_dir.mkdir(parents=True, exist_ok=True)
    for name, table in (("compare.csv", rows), ("compare_summary.csv", summary)):
        with open(cli.output_dir / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    plot(rows, cli.output_dir / "compare.png")
    for method in METHODS:
        mine = [s for s in summary if s["method"] == method]
        before = sum(s["heldout_before"] for s in mine) / len(mine)
        after = sum(s["heldout_after"] for s in mine) / len(mine)
        print(f"{method.upper()}: mean held-out accuracy {before:.1%} -> {after:.1%} over {len(mine)} seeds")
    print(f"Wrote {cli.output_dir / 'compare.png'}, compare.csv and compare_summary.csv")


if __name__ == "__main__":
    main()
