"""
DAPO vs FIPO on any recipe, from the same model and the same first generation batch, over several seeds.

    python examples/compare_dapo_fipo.py                                    # the quickstart, 3 seeds × 2 methods
    python examples/compare_dapo_fipo.py --recipe configs/long_sum.yaml     # the reasoning testbed
    python examples/compare_dapo_fipo.py --recipe configs/long_sum.yaml --fipo_decay_rates 8 32 128 --no_dapo
    python examples/compare_dapo_fipo.py --seeds 0 --max_steps 100          # a quick look
    python examples/compare_dapo_fipo.py --learning_rate 1e-4               # other flags override the recipe

What is compared:
1. DAPO is TRL's `GRPOTrainer` with `loss_type="dapo"`, dual clip `delta=10`, clip-higher `epsilon_high=0.28`, no KL,
   dropout off; FIPO is `FIPOTrainer`. Every other setting comes from the same recipe, including
   `steps_per_generation`: with 8, each generation batch feeds 8 optimizer steps, so both methods train off-policy on
   7 of them, and FIPO's influence weights act there (on the first step FIPO *is* DAPO). Only the `fipo_*` fields
   differ, and `--fipo_decay_rates` runs one FIPO per Future-KL half-life (the paper's Fig. 11 ablation).
2. Same seed, same start: the runs of one seed start from the same model and sample the same first generation batch
   (the summary's `first_batch` column is a hash of its completions, to check it).
3. Both trainers carry the same read-only measurements (`Measured`): quantiles of the response length, the share of
   step-by-step answers ([`fipo_trl.data.synthetic.reasoning_steps`]) and the policy's drift |log π_θ − log π_old| per
   token; FIPO also records its influence weight by token position. None of them changes an update.

Each run is saved to `OUTPUT_DIR/runs/<method>-seed<seed>.json` as it finishes, and a run already there is not
redone: several processes may share an output dir (e.g. one per seed), and `--plot_only` redraws from what is saved.
Writes `compare.png`, `compare.csv` (one row per method, seed and logging step), `compare_summary.csv` (held-out
accuracy, mean length, length quantiles and step-by-step share before and after, per method and seed) and
`compare_weights_by_position.csv` (FIPO's mean weight per 8-token bucket of the response, off-policy steps only).
"""

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser  # noqa: E402

from fipo_trl import FIPOTrainer  # noqa: E402
from fipo_trl.data.synthetic import reasoning_steps  # noqa: E402


RECIPE = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
POSITION_BUCKET = 8  # tokens per bucket of the weight-by-position curve
CURVES = {  # CSV column: logged key (None when a method does not log it)
    "reward": "reward",
    "accuracy": "accuracy",
    "mean_length": "completions/mean_length",
    "length_p10": "testbed/length_p10",
    "length_p50": "testbed/length_p50",
    "length_p90": "testbed/length_p90",
    "truncated": "completions/clipped_ratio",
    "step_share": "testbed/step_share",
    "entropy": "entropy",
    "abs_log_ratio_mean": "testbed/abs_log_ratio_mean",
    "clip_region": "clip_ratio/region_mean",
    "clip_low": "clip_ratio/low_mean",
    "clip_high": "clip_ratio/high_mean",
    "weight_mean": "fipo/weight_mean",
    "weight_min": "fipo/weight_min",
    "weight_max": "fipo/weight_max",
    "weight_clip_upper": "fipo/weight_clip_upper",
    "weight_clip_lower": "fipo/weight_clip_lower",
}


def library():
    """
    Every `fipo_trl` name this script needs beyond the trainer, in one place: the recipe parser, a `prepare` that
    builds the tokenizer, datasets and rewards of a recipe as `fipo-trl train` does, and the held-out sampler.
    """
    from fipo_trl import data, models, rewards
    from fipo_trl.evaluation.generation import generate_with_transformers, tokenize_prompts
    from fipo_trl.scripts.recipe import FIPOScriptArguments, parse_recipe

    def prepare(script_args, training_args, model_args):
        model_args.model_name_or_path = models.resolve_model_path(model_args.model_name_or_path)
        tokenizer = models.load_tokenizer(model_args.model_name_or_path, model_args.model_revision)
        train_dataset, heldout_dataset = data.get_dataset(script_args, tokenizer)
        training_args.model_init_kwargs = {"dtype": model_args.dtype}
        return SimpleNamespace(
            tokenizer=tokenizer,
            train_dataset=train_dataset,
            heldout_dataset=heldout_dataset,
            reward_funcs=rewards.get_reward_funcs(script_args, training_args),
        )

    return SimpleNamespace(
        FIPOScriptArguments=FIPOScriptArguments,
        parse_recipe=parse_recipe,
        prepare=prepare,
        generate=generate_with_transformers,
        tokenize_prompts=tokenize_prompts,
    )


class Measured:
    """Read-only testbed measurements, mixed into `GRPOTrainer` (DAPO) and `FIPOTrainer` alike."""

    first_batch = None  # hash of the first generation batch's completion ids
    position_weights = None  # (bucket, "A>0" | "A<0") -> [sum of weights, tokens], FIPO on off-policy steps only
    _measure_inputs = None

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        lengths = output["completion_mask"].sum(1).float()
        quantiles = torch.quantile(lengths, torch.tensor([0.1, 0.5, 0.9]))
        for name, value in zip(("length_p10", "length_p50", "length_p90"), quantiles.tolist(), strict=True):
            self._metrics[mode][f"testbed/{name}"].append(value)
        texts = self.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
        self._metrics[mode]["testbed/step_share"].append(sum(reasoning_steps(t) > 0 for t in texts) / len(texts))
        if self.first_batch is None:
            ids = (output["completion_ids"] * output["completion_mask"]).cpu().numpy().tobytes()
            self.first_batch = hashlib.sha256(ids).hexdigest()[:12]
        return output

    def _compute_loss(self, model, inputs):
        self._measure_inputs = inputs  # read by the first policy forward of this micro-batch
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._measure_inputs = None

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        inputs, self._measure_inputs = self._measure_inputs, None
        if inputs is not None:
            logps = result[0].detach()
            old = inputs.get("old_per_token_logps")
            old = logps if old is None else old  # on-policy: TRL skips the old forward
            mask = inputs["completion_mask"].bool()
            drift = (logps - old).abs()[mask].mean().item() if mask.any() else float("nan")
            self._metrics["train"]["testbed/abs_log_ratio_mean"].append(drift)
        return result

    def _log_fipo_metrics(self, w, advantages, mask):  # FIPOTrainer only
        super()._log_fipo_metrics(w, advantages, mask)
        if w.log_ratio.abs().amax() == 0:  # on-policy micro-batch: every weight is exactly 1
            return
        self.position_weights = self.position_weights or {}
        advantages = advantages if advantages.dim() == 1 else advantages[:, 0]
        buckets = torch.arange(mask.size(1)) // POSITION_BUCKET
        for sign, rows in (("A>0", advantages > 0), ("A<0", advantages < 0)):
            chosen = mask.bool() & rows.unsqueeze(1)
            for bucket in buckets[chosen.any(0)].unique().tolist():
                cells = chosen & (buckets == bucket).unsqueeze(0)
                total = self.position_weights.setdefault((bucket, sign), [0.0, 0])
                total[0] += w.weights[cells].double().sum().item()
                total[1] += int(cells.sum())


class MeasuredDAPO(Measured, GRPOTrainer):
    pass


class MeasuredFIPO(Measured, FIPOTrainer):
    pass


def dapo_args(argv, lib):
    """The recipe as a `GRPOConfig` for DAPO: FIPO's loss settings without its influence weights."""
    parser = TrlParser((lib.FIPOScriptArguments, GRPOConfig, ModelConfig))
    _, args, _, unknown = parser.parse_args_and_config(argv, return_remaining_strings=True)
    unknown_fields = [arg for arg in unknown if arg.startswith("--") and not arg.startswith("--fipo_")]
    if unknown_fields:
        raise ValueError(f"recipe fields unknown to GRPOConfig: {unknown_fields}")
    # FIPOConfig's defaults (official 32B script) where GRPOConfig's differ, so only the weights differ
    args.loss_type, args.delta, args.epsilon, args.epsilon_high, args.beta = "dapo", 10.0, 0.2, 0.28, 0.0
    args.disable_dropout = True
    return args


def heldout_check(lib, trainer, job, args):
    """
    One completion per held-out prompt, sampled as the recipe's held-out check samples it (training temperature,
    top-p 1, `max_completion_length`, seed = the run's seed): accuracy, length and step-by-step share.
    """
    rows = job.heldout_dataset
    model = trainer.model
    model.eval()
    try:
        samples = lib.generate(
            model,
            job.tokenizer,
            lib.tokenize_prompts(rows["prompt"], job.tokenizer),
            k=1,
            temperature=args.temperature,
            top_p=1.0,
            max_tokens=args.max_completion_length,
            batch_size=64,
            seed=args.seed,
            show_progress=False,
        )
    finally:
        model.train()
    texts = [completions[0]["completion"] for completions in samples]
    lengths = sorted(completions[0]["num_tokens"] for completions in samples)
    right = [reward is not None and reward > 0 for reward in job.reward_funcs[0](texts, solution=rows["solution"])]
    stepwise = [reasoning_steps(text) > 0 for text in texts]
    step_right = [r for r, s in zip(right, stepwise, strict=True) if s]
    return {
        "accuracy": sum(right) / len(right),
        "mean_length": sum(lengths) / len(lengths),
        **{f"length_p{q}": lengths[int(q / 100 * (len(lengths) - 1))] for q in (10, 50, 90)},
        "step_share": sum(stepwise) / len(stepwise),
        "step_accuracy": sum(step_right) / len(step_right) if step_right else None,
        "example": texts[0],
    }


def method_settings(method):
    """`"dapo"`, `"fipo"` (the recipe's FIPO fields) or `"fipo-tau8"` (FIPO with `fipo_decay_rate` 8)."""
    if method in ("dapo", "fipo"):
        return []
    return ["--fipo_decay_rate", method.removeprefix("fipo-tau")]


def train_one(lib, method, seed, argv):
    """Train one method from the recipe; return its saved record (log rows, held-out before/after, measurements)."""
    argv = [*argv, *method_settings(method)]
    script_args, training_args, model_args = lib.parse_recipe(argv)
    if method == "dapo":
        training_args = dapo_args(argv, lib)
    job = lib.prepare(script_args, training_args, model_args)
    trainer_cls = MeasuredDAPO if method == "dapo" else MeasuredFIPO
    trainer = trainer_cls(
        model=model_args.model_name_or_path,
        reward_funcs=job.reward_funcs,
        args=training_args,
        train_dataset=job.train_dataset,
        processing_class=job.tokenizer,
    )
    load_start = os.getloadavg()[0]
    before = heldout_check(lib, trainer, job, training_args)
    start = time.monotonic()
    trainer.train()
    wall = time.monotonic() - start
    after = heldout_check(lib, trainer, job, training_args)
    rows = []
    for entry in trainer.state.log_history:
        if "loss" not in entry:
            continue
        row = {"method": method, "seed": seed, "step": entry["step"]}
        row.update({column: entry.get(key) for column, key in CURVES.items()})
        rows.append(row)
    positions = [
        {
            "method": method,
            "seed": seed,
            "position": bucket * POSITION_BUCKET,
            "advantage": sign,
            "weight_mean": total / count,
            "tokens": count,
        }
        for (bucket, sign), (total, count) in sorted((trainer.position_weights or {}).items())
    ]
    weights_moved = any(row["weight_min"] is not None and row["weight_min"] < 1 for row in rows)
    if weights_moved and not positions:
        # FIPOTrainer._log_fipo_metrics is the hook; a renamed hook would silently empty the curve
        raise RuntimeError("no FIPO weights were recorded by position: did FIPOTrainer._log_fipo_metrics change?")
    return {
        "rows": rows,
        "positions": positions,
        "summary": {
            "method": method,
            "seed": seed,
            "first_batch": trainer.first_batch,
            **{f"{key}_before": value for key, value in before.items() if key != "example"},
            **{f"{key}_after": value for key, value in after.items() if key != "example"},
            "train_seconds": round(wall, 1),
            "steps": trainer.state.global_step,
            "load_1min_start": round(load_start, 2),
            "load_1min_end": round(os.getloadavg()[0], 2),
            "torch_threads": torch.get_num_threads(),
        },
        "examples": {"before": before["example"], "after": after["example"]},
    }


def check_start(cli, lib, argv):
    """Fail before any training, not after an hour of it: a missing plotting library, too few steps to log."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("compare_dapo_fipo.py draws compare.png with matplotlib: pip install matplotlib")
    _, training_args, _ = lib.parse_recipe(argv)  # also rejects unknown fields and bad values now
    steps, logging_steps = training_args.max_steps, training_args.logging_steps
    if logging_steps >= 1 and steps < logging_steps:
        sys.exit(
            f"--max_steps {steps} < logging_steps {logging_steps}: no step would be logged and the curves would be "
            f"empty. Raise --max_steps or pass --logging_steps {max(steps, 1)}."
        )
    if cli.heldout_size < 1:
        sys.exit("--heldout_size must be >= 1: the comparison reports held-out accuracy before and after.")


def mean_band(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return sum(values) / len(values), min(values), max(values)


def plot(records, methods, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for record in records for row in record["rows"]]
    colours = dict(zip(methods, ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange"], strict=False))
    panels = [
        ("accuracy", "training accuracy (sampled, T=1)"),
        ("mean_length", "mean response length (tokens)"),
        ("length_quantiles", "response length p10 / p50 / p90 (mean of seeds)"),
        ("step_share", "share of step-by-step answers"),
        ("weight_mean", "FIPO weight f (mean; band: min–max)"),
        ("weight_position", "FIPO weight by token position (off-policy)"),
        ("abs_log_ratio_mean", "policy drift mean |log π_θ − log π_old|"),
        ("clip_region", "PPO clip fraction (region)"),
        ("heldout", "held-out accuracy before → after (dots: seeds)"),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(16, 12))
    for ax, (column, panel_title) in zip(axes.flat, panels, strict=True):
        for index, method in enumerate(methods):
            colour = colours[method]
            mine = [row for row in rows if row["method"] == method]
            if column == "heldout":
                summaries = [r["summary"] for r in records if r["summary"]["method"] == method]
                for offset, key in ((0, "accuracy_before"), (1, "accuracy_after")):
                    values = [s[key] for s in summaries]
                    x = offset * (len(methods) + 1) + index
                    ax.bar(x, sum(values) / len(values), color=colour, alpha=0.5 if offset == 0 else 0.9)
                    ax.scatter([x] * len(values), values, color="black", s=8, zorder=3)
                ax.set_xticks([(len(methods) - 1) / 2, len(methods) + 1 + (len(methods) - 1) / 2], ["before", "after"])
                continue
            if column == "weight_position":
                positions = [p for r in records if r["summary"]["method"] == method for p in r["positions"]]
                for sign, style in (("A>0", "-"), ("A<0", "--")):
                    by_position = {}
                    for p in positions:
                        if p["advantage"] == sign:
                            by_position.setdefault(p["position"], []).append(p["weight_mean"])
                    xs = sorted(by_position)
                    if xs:
                        ys = [sum(by_position[x]) / len(by_position[x]) for x in xs]
                        ax.plot(xs, ys, style, color=colour, label=f"{method} {sign}")
                ax.set_xlabel("token position in the response")
                continue
            by_step = {}
            for row in mine:
                by_step.setdefault(row["step"], []).append(row)
            steps = sorted(by_step)
            if column == "length_quantiles":
                for key, style in (("length_p10", ":"), ("length_p50", "-"), ("length_p90", "--")):
                    stats = [mean_band([r[key] for r in by_step[s]]) for s in steps]
                    xs = [s for s, st in zip(steps, stats, strict=True) if st]
                    ax.plot(xs, [st[0] for st in stats if st], style, color=colour, label=f"{method} {key[-3:]}")
                continue
            stats = [mean_band([r[column] for r in by_step[s]]) for s in steps]
            xs = [s for s, st in zip(steps, stats, strict=True) if st]
            if not xs:
                continue
            means = [st[0] for st in stats if st]
            if column == "weight_mean":
                low = [min(r["weight_min"] for r in by_step[s] if r["weight_min"] is not None) for s in xs]
                high = [max(r["weight_max"] for r in by_step[s] if r["weight_max"] is not None) for s in xs]
            else:
                low, high = [st[1] for st in stats if st], [st[2] for st in stats if st]
            seeds = len({row["seed"] for row in mine})
            ax.plot(xs, means, color=colour, label=f"{method} ({seeds} seeds)")
            ax.fill_between(xs, low, high, color=colour, alpha=0.15)
        ax.set_title(panel_title, fontsize=10)
        if column not in ("heldout", "weight_position"):
            ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(output_dir, records, recipe):
    methods = list(dict.fromkeys(r["summary"]["method"] for r in records))
    tables = {
        "compare.csv": [row for r in records for row in r["rows"]],
        "compare_summary.csv": [r["summary"] for r in records],
        "compare_weights_by_position.csv": [p for r in records for p in r["positions"]],
    }
    for name, table in tables.items():
        if not table:
            continue
        with open(output_dir / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in table for k in row)))
            writer.writeheader()
            writer.writerows(table)
    plot(records, methods, output_dir / "compare.png", f"{' vs '.join(m.upper() for m in methods)} on {recipe}")
    print(f"\n{'method':<12} {'runs':>4}  {'held-out accuracy':>24}  {'mean length':>22}  {'step-by-step share':>22}")
    for method in methods:
        mine = [r["summary"] for r in records if r["summary"]["method"] == method]
        cells = []
        for key in ("accuracy", "mean_length", "step_share"):
            before, after = mean_band([s[f"{key}_before"] for s in mine]), mean_band([s[f"{key}_after"] for s in mine])
            scale = 100 if key != "mean_length" else 1
            cells.append(
                f"{before[0] * scale:.1f} → {after[0] * scale:.1f} [{after[1] * scale:.1f}, {after[2] * scale:.1f}]"
            )
        print(f"{method:<12} {len(mine):>4}  {cells[0]:>24}  {cells[1]:>22}  {cells[2]:>22}")
    print(f"(after: mean over seeds [min, max]; accuracy and share in %)\nWrote {output_dir}/compare.png and CSVs")


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_steps", type=int, help="defaults to the recipe's")
    parser.add_argument("--heldout_size", type=int, default=256)
    parser.add_argument("--fipo_decay_rates", type=float, nargs="+", help="one FIPO run per half-life (ablation)")
    parser.add_argument("--no_dapo", action="store_true", help="FIPO runs only (e.g. for the half-life ablation)")
    parser.add_argument("--output_dir", type=Path, help="defaults to outputs/compare_dapo_fipo/<recipe name>")
    parser.add_argument("--plot_only", action="store_true", help="redraw from OUTPUT_DIR/runs, train nothing")
    cli, overrides = parser.parse_known_args()  # anything else overrides the recipe, e.g. --learning_rate 1e-4
    output_dir = cli.output_dir or Path("outputs/compare_dapo_fipo") / Path(cli.recipe).stem
    methods = [] if cli.no_dapo else ["dapo"]
    methods += [f"fipo-tau{rate:g}" for rate in cli.fipo_decay_rates] if cli.fipo_decay_rates else ["fipo"]

    lib = library()

    def argv_for(method, seed):
        return [
            *["--config", cli.recipe, "--seed", str(seed), "--report_to", "none"],
            *(["--max_steps", str(cli.max_steps)] if cli.max_steps else []),
            *["--output_dir", str(output_dir / f"{method}-seed{seed}"), "--save_strategy", "no"],
            *["--token_view", "false", "--disable_tqdm", "true", "--heldout_size", str(cli.heldout_size)],
            *overrides,
        ]

    if not cli.plot_only:
        check_start(cli, lib, argv_for("fipo", cli.seeds[0]))
    runs_dir = output_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for seed in [] if cli.plot_only else cli.seeds:
        for method in methods:
            path = runs_dir / f"{method}-seed{seed}.json"
            if path.exists():
                print(f"{method} seed {seed}: already in {path}, skipped")
                continue
            record = train_one(lib, method, seed, argv_for(method, seed))
            path.write_text(json.dumps(record, indent=1) + "\n")
            s = record["summary"]
            print(
                f"{method} seed {seed}: held-out {s['accuracy_before']:.1%} -> {s['accuracy_after']:.1%}, "
                f"length {s['mean_length_before']:.1f} -> {s['mean_length_after']:.1f} in {s['train_seconds']:.0f} s "
                f"(load {s['load_1min_start']} -> {s['load_1min_end']})",
                flush=True,
            )
    records = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
    if not records:
        sys.exit(f"no runs in {runs_dir}")
    write_outputs(output_dir, records, Path(cli.recipe).name)


if __name__ == "__main__":
    main()
