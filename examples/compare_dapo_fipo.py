"""
DAPO vs FIPO on any recipe, from the same model and the same first generation batch, over several seeds.

    python examples/compare_dapo_fipo.py                                    # the quickstart, 3 seeds × 2 methods
    python examples/compare_dapo_fipo.py --recipe configs/long_sum.yaml     # the reasoning testbed
    python examples/compare_dapo_fipo.py --recipe configs/long_sum.yaml --fipo_decay_rates 8 32 128 --no_dapo
    python examples/compare_dapo_fipo.py --seeds 0 --max_steps 100          # a quick look
    python examples/compare_dapo_fipo.py --beta 0.01                        # other flags override the recipe

    # The regime map: 3 methods × 3 off-policy levels × 3 seeds, 2 runs at a time (benchmarks/results/regime_map/)
    python examples/compare_dapo_fipo.py --recipe configs/long_sum.yaml --methods dapo fipo_sym fipo_high \
        --levels 8:1e-4 16:3e-4 32:1e-3 --seeds 0 1 2 --max_steps 96 --logging_steps 8 --workers 2 \
        --output_dir benchmarks/results/regime_map

What is compared:
1. DAPO is `DAPOTrainer` (TRL's `GRPOTrainer`) with `loss_type="dapo"`, dual clip `delta=10`, clip-higher
   `epsilon_high=0.28`, no KL, dropout off; FIPO is `fipo-trl train`'s trainer. Every other setting comes from the
   same recipe, including
   `steps_per_generation`: with 8, each generation batch feeds 8 optimizer steps, so both methods train off-policy on
   7 of them, and FIPO's influence weights act there (on the first step FIPO *is* DAPO). Only the `fipo_*` fields
   differ, and `--fipo_decay_rates` runs one FIPO per Future-KL half-life (the paper's Fig. 11 ablation).
2. Same seed, same start: the runs of one seed start from the same model and sample the same first generation batch
   (the summary's `first_batch` column is a hash of its completions, to check it).
3. Both trainers carry the same read-only measurements (`Measured`): quantiles of the response length, the share of
   step-by-step answers ([`fipo_trl.data.synthetic.reasoning_steps`]) and the policy's drift |log π_θ − log π_old| per
   token; FIPO also records its influence weight by token position. None of them changes an update.

4. Methods (`--methods`): `dapo`; `fipo` (the recipe's `fipo_*` fields); `fipo_sym` (f ∈ [0.8, 1.2], safety
   threshold 3: the paper's 7B pilot); `fipo_high` (f ∈ [1, 1.2], safety threshold 10: `FIPOConfig`'s default and
   the 32B run); `fipo-tau<N>` (the recipe's FIPO with half-life N).
5. Off-policy levels: `--steps_per_generation` and `--learning_rate` take several values and form a grid (their
   product), or `--levels SPG:LR ...` lists the pairs to run. Each (method, level, seed) is one run.

Each run is saved to `OUTPUT_DIR/runs/<method>[-spg<S>][-lr<LR>]-seed<seed>.json` as it finishes, and a run already
there is not redone: a stopped grid resumes where it stopped, several processes may share an output dir, and
`--plot_only` redraws from what is saved. `--workers N` trains N runs at once, each in its own process at one thread.
With one off-policy level it writes `compare.png`, `compare.csv` (one row per method, seed and logging step),
`compare_summary.csv` (held-out accuracy, mean length, length quantiles and step-by-step share before and after, per
method and seed) and `compare_weights_by_position.csv` (FIPO's mean weight per 8-token bucket of the response,
off-policy steps only). With several it writes `grid.png` (small multiples: one row per level, one column per
measurement), `grid_runs.csv` (one row per run), `grid_cells.csv` (per level and method: mean, min and max over
seeds, held-out accuracy minus DAPO's paired by seed, and whether the seeds' ranges separate), `grid_curves.csv`
and `grid_weights_by_position.csv`.
"""

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from trl import ModelConfig, TrlParser  # noqa: E402

from fipo_trl import DAPOConfig, DAPOTrainer  # noqa: E402
from fipo_trl.cli.recipe_classes import RecipeTrainer  # noqa: E402
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
    "raw_weight_mean": "fipo/raw_weight_mean",
    "future_kl_mean": "fipo/future_kl_mean",
    "safety_capped": "fipo/safety_capped_frac",
    "dual_clipped": "fipo/dual_clip_frac",
    "zero_std_groups": "frac_reward_zero_std",
    "grad_norm": "grad_norm",
}


def library():
    """
    Every `fipo_trl` name this script needs beyond the trainer, in one place: the recipe parser, `prepare`, the set-up
    of `fipo-trl train` ([`fipo_trl.run.setup.prepare_run`]: the same checks, tokenizer, datasets and rewards), and
    the held-out sampler.
    """
    import atexit
    import contextlib

    from fipo_trl.cli.recipe import FIPOScriptArguments, parse_recipe
    from fipo_trl.evaluation.generation import Sampling, score_on_processes
    from fipo_trl.run.setup import prepare_run

    held = contextlib.ExitStack()  # each run's lock on its output_dir, held until the script ends
    atexit.register(held.close)

    def prepare(script_args, training_args, model_args):
        return held.enter_context(prepare_run(script_args, training_args, model_args))

    return SimpleNamespace(
        FIPOScriptArguments=FIPOScriptArguments,
        parse_recipe=parse_recipe,
        prepare=prepare,
        Sampling=Sampling,
        score_on_processes=score_on_processes,
    )


class Measured:
    """Read-only testbed measurements, mixed into `DAPOTrainer` and the FIPO trainer of `fipo-trl train` alike."""

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


class MeasuredDAPO(Measured, DAPOTrainer):
    pass


class MeasuredFIPO(Measured, RecipeTrainer):  # FIPOTrainer with the recipe's dynamic sampling and exact resume
    pass


def dapo_args(argv, lib):
    """The recipe as a `DAPOConfig`: FIPO's loss settings without its influence weights, the filter as for FIPO."""
    parser = TrlParser((lib.FIPOScriptArguments, DAPOConfig, ModelConfig))
    parser.set_defaults(dynamic_sampling=False)  # on only where the recipe says so, as for FIPO (the YAML wins)
    _, args, _, unknown = parser.parse_args_and_config(argv, return_remaining_strings=True)
    unknown_fields = [arg for arg in unknown if arg.startswith("--") and not arg.startswith("--fipo_")]
    if unknown_fields:
        raise ValueError(f"recipe fields unknown to DAPOConfig: {unknown_fields}")
    # FIPOConfig's defaults (official 32B script) where GRPOConfig's differ, so only the weights differ
    args.loss_type, args.delta, args.epsilon, args.epsilon_high, args.beta = "dapo", 10.0, 0.2, 0.28, 0.0
    args.disable_dropout = True
    return args


def heldout_check(lib, trainer, job, args):
    """
    One completion per held-out prompt, sampled as the recipe's held-out check samples it (training temperature,
    top-p 1, `max_completion_length`, seed = the run's seed): accuracy, length and step-by-step share.
    """

    def score(rows, indices, samples):
        texts = [completions[0]["completion"] for completions in samples]
        rewards = job.reward_funcs[0](texts, solution=rows["solution"])
        return [
            (reward is not None and reward > 0, completions[0]["num_tokens"], text)
            for reward, completions, text in zip(rewards, samples, texts, strict=True)
        ]

    sampling = lib.Sampling(temperature=args.temperature, max_tokens=args.max_completion_length, seed=args.seed)
    results = lib.score_on_processes(trainer.model, job.tokenizer, job.heldout_dataset, score, sampling, 64)
    right = [ok for ok, _, _ in results]
    lengths = sorted(length for _, length, _ in results)
    texts = [text for _, _, text in results]
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


WEIGHT_MODES = {  # method: the FIPO fields it sets over the recipe's
    "fipo_sym": ["--fipo_clip_high_only", "false", "--fipo_safety_threshold", "3.0"],  # 7B pilot: f in [0.8, 1.2]
    "fipo_high": ["--fipo_clip_high_only", "true", "--fipo_safety_threshold", "10.0"],  # FIPOConfig default, 32B run
}
METHOD_HELP = (
    "dapo; fipo (the recipe's fipo_* fields); fipo_sym (f in [0.8, 1.2], safety 3: the 7B pilot); fipo_high "
    "(f in [1, 1.2], safety 10: FIPOConfig's default and the 32B run); fipo-tau<N> (the recipe's FIPO, half-life N)"
)


def method_settings(method):
    """The recipe fields a method overrides; see `METHOD_HELP`."""
    if method in ("dapo", "fipo"):
        return []
    if method in WEIGHT_MODES:
        return WEIGHT_MODES[method]
    rate = method.removeprefix("fipo-tau")
    if method == rate or not rate.replace(".", "", 1).isdigit() or float(rate) <= 0:
        sys.exit(f"unknown method {method!r}: choose from {METHOD_HELP}")
    return ["--fipo_decay_rate", rate]


def train_one(lib, method, seed, argv):
    """Train one method from the recipe; return its saved record (log rows, held-out before/after, measurements)."""
    argv = [*argv, *method_settings(method)]
    script_args, training_args, model_args = lib.parse_recipe(argv)
    if method == "dapo":
        training_args = dapo_args(argv, lib)
    job = lib.prepare(script_args, training_args, model_args)
    trainer_cls = MeasuredDAPO if method == "dapo" else MeasuredFIPO
    trainer = trainer_cls(
        model=job.model_name_or_path,
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
            "steps_per_generation": training_args.steps_per_generation,
            "learning_rate": training_args.learning_rate,
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


LENGTH_MARK = 40  # tokens: a mean length past it means most answers are step by step (direct ones are 12)


def order(record):
    """Grid order: off-policy level (steps per generation, then learning rate), DAPO first, then seed."""
    s = record["summary"]
    return s["steps_per_generation"], s["learning_rate"], s["method"] != "dapo", s["method"], s["seed"]


def level_of(summary):
    return f"spg{summary['steps_per_generation']}-lr{summary['learning_rate']:g}"


def run_stats(record):
    """One run in one row: held-out before/after, and its training curves reduced to a few numbers."""
    s, rows = record["summary"], record["rows"]

    def values(column):
        return [row[column] for row in rows if row.get(column) is not None]

    def mean(column):
        found = values(column)
        return sum(found) / len(found) if found else None

    reached = [row["step"] for row in rows if row["mean_length"] is not None and row["mean_length"] >= LENGTH_MARK]
    return {
        "level": level_of(s),
        "steps_per_generation": s["steps_per_generation"],
        "learning_rate": s["learning_rate"],
        "method": s["method"],
        "seed": s["seed"],
        "first_batch": s["first_batch"],
        **{key: s[key] for key in ("accuracy_before", "accuracy_after", "mean_length_before", "mean_length_after")},
        **{key: s[key] for key in ("step_share_after", "step_accuracy_after", "length_p90_after")},
        "steps_to_length_40": reached[0] if reached else None,  # first logging step with mean length >= 40
        "drift_first": values("abs_log_ratio_mean")[0] if values("abs_log_ratio_mean") else None,
        "drift_mean": mean("abs_log_ratio_mean"),
        "clip_region_mean": mean("clip_region"),
        "weight_mean": mean("weight_mean"),
        "weight_min": min(values("weight_min"), default=None),
        "weight_max": max(values("weight_max"), default=None),
        "weight_at_upper": mean("weight_clip_upper"),
        "weight_at_lower": mean("weight_clip_lower"),
        "safety_capped": mean("safety_capped"),
        "entropy_first": values("entropy")[0] if values("entropy") else None,
        "entropy_last": values("entropy")[-1] if values("entropy") else None,
        "train_accuracy_last": values("accuracy")[-1] if values("accuracy") else None,
        "collapsed": s["accuracy_after"] < s["accuracy_before"],  # RL left the model worse than it started
        "train_seconds": s["train_seconds"],
        "load_1min": f"{s['load_1min_start']}-{s['load_1min_end']}",
    }


CELL_COLUMNS = [  # per-run columns summarised per cell as mean, min and max over seeds
    "accuracy_after",
    "mean_length_after",
    "step_share_after",
    "step_accuracy_after",
    "steps_to_length_40",
    "drift_first",
    "drift_mean",
    "clip_region_mean",
    "weight_mean",
    "weight_at_upper",
    "weight_at_lower",
    "entropy_last",
    "train_seconds",
]


def cell_table(stats):
    """
    One row per (level, method): mean [min, max] over seeds, and held-out accuracy minus DAPO's paired by seed. A cell
    *separates* from DAPO when, with at least 2 seeds on each side, its seeds' range of held-out accuracy (or mean
    length) does not overlap DAPO's.
    """
    cells = {}
    for row in stats:
        cells.setdefault((row["level"], row["method"]), []).append(row)
    table = []
    for (level, method), rows in cells.items():
        cell = {"level": level, "method": method, "seeds": len(rows)}
        cell["accuracy_before"] = sum(r["accuracy_before"] for r in rows) / len(rows)
        for column in CELL_COLUMNS:
            band = mean_band([r.get(column) for r in rows])
            for suffix, value in zip(("", "_min", "_max"), band or (None,) * 3, strict=True):
                cell[column + suffix] = value
        cell["collapsed_runs"] = sum(r["collapsed"] for r in rows)
        dapo = {r["seed"]: r for r in cells.get((level, "dapo"), [])}
        if method != "dapo" and dapo:
            paired = [r["accuracy_after"] - dapo[r["seed"]]["accuracy_after"] for r in rows if r["seed"] in dapo]
            band = mean_band(paired)
            cell.update(zip(("accuracy_vs_dapo", "accuracy_vs_dapo_min", "accuracy_vs_dapo_max"), band, strict=True))
            for key in ("accuracy_after", "mean_length_after"):
                ours, theirs = [r[key] for r in rows], [r[key] for r in dapo.values()]
                apart = min(ours) > max(theirs) or max(ours) < min(theirs)
                cell[f"separates_{key.removesuffix('_after')}"] = apart and min(len(ours), len(theirs)) >= 2
        table.append(cell)
    return table


def write_csv(path, table):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in table for k in row)))
        writer.writeheader()
        writer.writerows(table)


def plot_grid(records, path, title):
    """Small multiples: one row per off-policy level, one column per measurement, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = sorted(records, key=order)
    levels = list(dict.fromkeys(level_of(r["summary"]) for r in records))
    methods = list(dict.fromkeys(r["summary"]["method"] for r in records))
    colours = dict(zip(methods, ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange"], strict=False))
    columns = [
        ("heldout", "held-out accuracy after (bar: mean; dots: seeds)"),
        ("mean_length", "mean response length"),
        ("step_share", "share of step-by-step answers"),
        ("abs_log_ratio_mean", "drift |log π_θ − log π_old| per token"),
        ("clip_region", "PPO clip fraction (region)"),
        ("weight_mean", "FIPO weight mean (band: min–max)"),
        ("weight_position", "FIPO weight by position (— A>0, -- A<0)"),
        ("entropy", "entropy"),
    ]
    fig, axes = plt.subplots(len(levels), len(columns), figsize=(3.4 * len(columns), 2.9 * len(levels)), squeeze=False)
    for row_axes, level in zip(axes, levels, strict=True):
        mine = [r for r in records if level_of(r["summary"]) == level]
        for ax, (column, column_title) in zip(row_axes, columns, strict=True):
            for index, method in enumerate(methods):
                runs = [r for r in mine if r["summary"]["method"] == method]
                if not runs:
                    continue
                colour = colours[method]
                if column == "heldout":
                    values = [r["summary"]["accuracy_after"] for r in runs]
                    ax.bar(index, sum(values) / len(values), color=colour, alpha=0.7, label=method)
                    ax.scatter([index] * len(values), values, color="black", s=8, zorder=3)
                    before = [r["summary"]["accuracy_before"] for r in runs]
                    ax.axhline(sum(before) / len(before), color="grey", ls=":", lw=1)
                    ax.set_xticks(range(len(methods)), methods, fontsize=7)
                    continue
                if column == "weight_position":
                    for sign, style in (("A>0", "-"), ("A<0", "--")):
                        by_position = {}
                        for p in (p for r in runs for p in r["positions"] if p["advantage"] == sign):
                            by_position.setdefault(p["position"], []).append(p["weight_mean"])
                        xs = sorted(by_position)
                        ys = [sum(by_position[x]) / len(by_position[x]) for x in xs]
                        if xs:
                            ax.plot(xs, ys, style, color=colour)
                    continue
                by_step = {}
                for row in (row for r in runs for row in r["rows"]):
                    if row.get(column) is not None:
                        by_step.setdefault(row["step"], []).append(row)
                steps = sorted(by_step)
                if not steps:
                    continue
                means = [sum(r[column] for r in by_step[s]) / len(by_step[s]) for s in steps]
                if column == "weight_mean":
                    low = [min(r["weight_min"] for r in by_step[s]) for s in steps]
                    high = [max(r["weight_max"] for r in by_step[s]) for s in steps]
                else:
                    low = [min(r[column] for r in by_step[s]) for s in steps]
                    high = [max(r[column] for r in by_step[s]) for s in steps]
                ax.plot(steps, means, color=colour, lw=1.2, label=method)
                ax.fill_between(steps, low, high, color=colour, alpha=0.15)
            if column == "abs_log_ratio_mean":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            ax.set_title(column_title if level == levels[0] else "", fontsize=9)
        row_axes[0].set_ylabel(level.replace("-", "\n"), fontsize=9)
        row_axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def band_text(cell, key, scale=1, sign=""):
    """`mean [min, max]` of a cell's column, blank when the cell has none (DAPO against itself)."""
    if cell.get(key) is None:
        return ""
    mean, low, high = (cell[key + suffix] * scale for suffix in ("", "_min", "_max"))
    return f"{mean:{sign}.1f} [{low:{sign}.1f}, {high:{sign}.1f}]"


def write_grid(output_dir, records, recipe):
    """`grid.png`, `grid_runs.csv` (one row per run), `grid_cells.csv` (per level and method), `grid_curves.csv`."""
    records = sorted(records, key=order)
    stats = [run_stats(r) for r in records]
    batches = {}
    for row in stats:
        batches.setdefault((row["seed"], row["steps_per_generation"]), set()).add(row["first_batch"])
    differing = sorted(key for key, hashes in batches.items() if len(hashes) > 1)
    if differing:
        print(f"WARNING: runs of the same seed and steps_per_generation sampled different first batches: {differing}")
    cells = cell_table(stats)
    write_csv(output_dir / "grid_runs.csv", stats)
    write_csv(output_dir / "grid_cells.csv", cells)
    curves = [{"level": level_of(r["summary"]), **row} for r in records for row in r["rows"]]
    write_csv(output_dir / "grid_curves.csv", curves)
    positions = [{"level": level_of(r["summary"]), **p} for r in records for p in r["positions"]]
    if positions:
        write_csv(output_dir / "grid_weights_by_position.csv", positions)
    plot_grid(records, output_dir / "grid.png", f"{', '.join(dict.fromkeys(c['method'] for c in cells))} on {recipe}")
    print(f"\n{'level':<16} {'method':<10} {'n':>2}  {'held-out acc %':>20}  {'vs DAPO':>20}  {'length':>18}  drift")
    for cell in cells:
        print(
            f"{cell['level']:<16} {cell['method']:<10} {cell['seeds']:>2}  "
            f"{band_text(cell, 'accuracy_after', 100):>20}  {band_text(cell, 'accuracy_vs_dapo', 100, '+'):>20}  "
            f"{band_text(cell, 'mean_length_after'):>18}  {cell['drift_mean']:.3f}"
            + ("  SEPARATES" if cell.get("separates_accuracy") else "")
        )
    print(f"(mean over seeds [min, max]; vs DAPO paired by seed)\nWrote {output_dir}/grid.png and grid_*.csv")


def run_name(method, seed, level):
    """`dapo-seed0` for the recipe's off-policy level, `dapo-spg32-lr0.001-seed0` on a grid axis."""
    spg, lr = level
    parts = [method, *([f"spg{spg}"] if spg is not None else []), *([f"lr{lr:g}"] if lr is not None else [])]
    return "-".join([*parts, f"seed{seed}"])


def parse_levels(cli, parser):
    """The off-policy levels (steps_per_generation, learning_rate): the product of the axes, or `--levels` pairs."""
    if cli.levels and (cli.steps_per_generation or cli.learning_rate):
        parser.error("--levels lists (steps_per_generation, learning_rate) pairs: drop the two axes, or --levels")
    if not cli.levels:
        return [(spg, lr) for spg in cli.steps_per_generation or [None] for lr in cli.learning_rate or [None]]
    levels = []
    for level in cli.levels:
        spg, _, lr = level.partition(":")
        try:
            levels.append((int(spg), float(lr)))
        except ValueError:
            parser.error(f"--levels {level!r}: write STEPS_PER_GENERATION:LEARNING_RATE, e.g. 32:1e-3")
    return levels


def run_workers(count, argv):
    """This script again in `count` processes at one thread each, worker i training runs i, i+count, ... ."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, *argv, "--workers", "1", "--shard", f"{i}/{count}", "--no_outputs"], env=env
        )
        for i in range(count)
    ]
    failed = [i for i, worker in enumerate(workers) if worker.wait() != 0]
    if failed:
        sys.exit(f"workers {failed} failed (see their output above); finished runs are saved, rerun to resume")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_steps", type=int, help="defaults to the recipe's")
    parser.add_argument("--heldout_size", type=int, default=256)
    parser.add_argument("--methods", nargs="+", help=f"{METHOD_HELP}. Default: dapo fipo")
    parser.add_argument("--fipo_decay_rates", type=float, nargs="+", help="one FIPO run per half-life (ablation)")
    parser.add_argument("--no_dapo", action="store_true", help="FIPO runs only (e.g. for the half-life ablation)")
    parser.add_argument("--steps_per_generation", type=int, nargs="+", help="grid axis (default: the recipe's)")
    parser.add_argument("--learning_rate", type=float, nargs="+", help="grid axis (default: the recipe's)")
    parser.add_argument("--levels", nargs="+", help="off-policy levels as SPG:LR pairs, e.g. 8:1e-4 32:1e-3")
    parser.add_argument("--workers", type=int, default=1, help="runs trained at once, one process and thread each")
    parser.add_argument("--shard", help=argparse.SUPPRESS)  # "i/n": a worker's share of the runs
    parser.add_argument("--no_outputs", action="store_true", help=argparse.SUPPRESS)  # a worker: train, no tables
    parser.add_argument("--output_dir", type=Path, help="defaults to outputs/compare_dapo_fipo/<recipe name>")
    parser.add_argument("--plot_only", action="store_true", help="redraw from OUTPUT_DIR/runs, train nothing")
    cli, overrides = parser.parse_known_args(argv)  # anything else overrides the recipe, e.g. --beta 0.01
    output_dir = cli.output_dir or Path("outputs/compare_dapo_fipo") / Path(cli.recipe).stem
    if cli.methods:
        methods = cli.methods
    else:
        methods = [] if cli.no_dapo else ["dapo"]
        methods += [f"fipo-tau{rate:g}" for rate in cli.fipo_decay_rates] if cli.fipo_decay_rates else ["fipo"]
    for method in methods:
        method_settings(method)  # an unknown name stops here, before any training
    levels = parse_levels(cli, parser)
    if cli.workers < 1:
        parser.error("--workers must be >= 1")

    lib = library()

    def argv_for(method, seed, level):
        spg, lr = level
        return [
            *["--config", cli.recipe, "--seed", str(seed), "--report_to", "none"],
            *(["--max_steps", str(cli.max_steps)] if cli.max_steps else []),
            *(["--steps_per_generation", str(spg)] if spg is not None else []),
            *(["--learning_rate", repr(lr)] if lr is not None else []),
            *["--output_dir", str(output_dir / run_name(method, seed, level)), "--save_strategy", "no"],
            *["--token_view", "false", "--disable_tqdm", "true", "--heldout_size", str(cli.heldout_size)],
            *overrides,
        ]

    runs = [(method, seed, level) for seed in cli.seeds for level in levels for method in methods]
    runs_dir = output_dir / "runs"
    if not cli.plot_only:
        for level in levels:
            check_start(cli, lib, argv_for(methods[-1], cli.seeds[0], level))
        runs_dir.mkdir(parents=True, exist_ok=True)
        if cli.workers > 1:
            run_workers(cli.workers, argv)
            runs = []  # the workers trained them
        elif cli.shard:
            index, count = (int(part) for part in cli.shard.split("/"))
            runs = runs[index::count]
    for method, seed, level in [] if cli.plot_only else runs:
        path = runs_dir / f"{run_name(method, seed, level)}.json"
        if path.exists():
            print(f"{path.stem}: already in {path}, skipped")
            continue
        record = train_one(lib, method, seed, argv_for(method, seed, level))
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(record, indent=1) + "\n")
        partial.replace(path)  # a killed run leaves no half-written record behind
        s = record["summary"]
        print(
            f"{path.stem}: held-out {s['accuracy_before']:.1%} -> {s['accuracy_after']:.1%}, "
            f"length {s['mean_length_before']:.1f} -> {s['mean_length_after']:.1f} in {s['train_seconds']:.0f} s "
            f"(load {s['load_1min_start']} -> {s['load_1min_end']})",
            flush=True,
        )
    if cli.no_outputs:
        return
    records = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
    if not records:
        sys.exit(f"no runs in {runs_dir}")
    if len({(r["summary"]["steps_per_generation"], r["summary"]["learning_rate"]) for r in records}) > 1:
        write_grid(output_dir, records, Path(cli.recipe).name)
    else:
        write_outputs(output_dir, records, Path(cli.recipe).name)


if __name__ == "__main__":
    main()
