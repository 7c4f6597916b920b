"""The reasoning testbed: the `long_sum` task and its step detector, the seeded model builder, and the recipe."""

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fipo_trl.data.synthetic import (
    LONG_SUM_OPERANDS,
    format_answer,
    generate_problems,
    is_step_by_step,
    reasoning_steps,
    step_by_step_answer,
    train_and_heldout,
)
from fipo_trl.rewards import dapo_accuracy_reward


ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "long_sum.yaml"
ASSET = ROOT / "fipo_trl" / "assets" / "tiny-qwen2-long-sum"


def load_builder():
    spec = importlib.util.spec_from_file_location(
        "build_reasoning_model", ROOT / "scripts" / "build_reasoning_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the task ----------------------------------------------------------------------------------------------------


def test_long_sum_prompts_have_3_to_6_two_digit_operands_and_exact_sums():
    counts = set()
    for row in generate_problems(500, seed=2, task="long_sum"):
        match = re.fullmatch(r"(\d\d(?:\+\d\d)+)=\?\n", row["prompt"])
        assert match, row["prompt"]
        operands = [int(x) for x in match.group(1).split("+")]
        counts.add(len(operands))
        assert all(10 <= x <= 99 for x in operands)
        assert row["solution"] == str(sum(operands))
    assert counts == set(range(LONG_SUM_OPERANDS[0], LONG_SUM_OPERANDS[1] + 1))


def test_long_sum_is_seeded_and_its_heldout_set_is_disjoint():
    assert generate_problems(50, seed=3, task="long_sum") == generate_problems(50, seed=3, task="long_sum")
    assert generate_problems(50, seed=3, task="long_sum") != generate_problems(50, seed=4, task="long_sum")
    train, heldout = train_and_heldout(4096, 256, seed=0, task="long_sum")
    assert not set(train["prompt"]) & set(heldout["prompt"])


def test_the_new_task_leaves_the_quickstart_problems_unchanged():
    # first rows of the quickstart's addition set (synthetic_seed 0), as generated before `long_sum` existed
    rows = generate_problems(3, seed=0)
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    assert digest == QUICKSTART_ROWS_DIGEST, rows


QUICKSTART_ROWS_DIGEST = "dbe19a6020ea1030"  # 20+69, 62+16, 23+23


def test_step_by_step_answer_writes_one_running_sum_per_line():
    assert step_by_step_answer("23+45+17+88=?\n") == "23+45=68\n68+17=85\n85+88=173\nAnswer: 173"
    assert step_by_step_answer("10+20+30=?\n") == "10+20=30\n30+30=60\nAnswer: 60"


def test_step_by_step_answers_of_the_generator_score_plus_one_with_the_dapo_scorer():
    rows = generate_problems(100, seed=7, task="long_sum")
    completions = [step_by_step_answer(row["prompt"]) for row in rows]
    solutions = [row["solution"] for row in rows]
    assert dapo_accuracy_reward(completions, solutions) == [1.0] * 100
    # a chain with a wrong final sum is wrong: only the "Answer:" line counts
    wrong = completions[0].rsplit("Answer: ", 1)[0] + format_answer(int(solutions[0]) + 1)
    assert dapo_accuracy_reward([wrong], solutions[:1]) == [-1.0]


@pytest.mark.parametrize(
    ("completion", "steps"),
    [
        ("Answer: 173", 0),  # direct
        ("Answer: 17+3=20", 0),  # an equation after "Answer:" is not reasoning
        ("23+45=68\n68+17=85\n85+88=173\nAnswer: 173", 3),
        ("23+45=68\n68+17=99\nAnswer: 180", 2),  # wrong sums still count as steps
        ("23+45=68\n68+17=85\n85+8", 2),  # truncated: no answer line, the complete lines count
        ("12+3=15\nAnswer: 1\n15+4=19\nAnswer: 19", 2),  # steps before the last answer line
        ("hello\n23+=5\nAnswer: 5", 0),  # malformed lines are not steps
        ("", 0),
    ],
)
def test_reasoning_steps_counts_running_sum_lines_before_the_answer(completion, steps):
    assert reasoning_steps(completion) == steps
    assert is_step_by_step(completion) == (steps > 0)


# ---- the model builder ---------------------------------------------------------------------------------------------


def small_build(builder, output_dir):
    builder.main(
        [
            *["--output_dir", str(output_dir), "--train_size", "300", "--batch_size", "8"],
            *["--max_skill_steps", "4", "--check_every", "2", "--max_prior_steps", "4", "--prior_check_every", "2"],
            *["--check_size", "4", "--final_size", "4"],
        ]
    )
    return load_file(output_dir / "model.safetensors")


@pytest.mark.slow  # two builds, each training the model: 49 s at 1-minute load 8 on 2 cores
def test_builder_rebuild_gives_identical_weights(tmp_path):
    builder = load_builder()
    threads = torch.get_num_threads()
    try:
        first, second = small_build(builder, tmp_path / "a"), small_build(builder, tmp_path / "b")
    finally:
        torch.set_num_threads(threads)  # the builder pins one thread
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    init = builder.build_model(builder.build_tokenizer(model_max_length=128), 1234, max_position_embeddings=128)
    assert any(not torch.equal(first[name], tensor) for name, tensor in init.state_dict().items() if name in first)
    stats = json.loads((tmp_path / "a" / "build_stats.json").read_text())
    # an untrained model: phase 1 runs to its cap, phase 2 stops at its first check (it never writes steps)
    assert stats["skill_steps"] == 4 and stats["prior_steps"] == 2
    assert set(stats["heldout_T1"]) >= {"accuracy", "step_share", "mean_length", "length_p10_p50_p90"}


def test_shipped_model_card_states_the_data_mix_and_the_before_rl_numbers():
    card = (ASSET / "README.md").read_text()
    stats = json.loads((ASSET / "build_stats.json").read_text())
    for field in ("skill_step_share", "prior_step_shares", "direct_noise", "seed"):
        assert field in stats
    before = stats["heldout_T1"]
    assert 0 < before["step_share"] < 0.6  # both formats are sampled, direct ones more often
    assert before["direct_accuracy"] < 0.1 < before["step_accuracy"]  # short answers mostly wrong
    assert f"{before['accuracy']:.1%}" in card


# ---- the recipe ----------------------------------------------------------------------------------------------------


@pytest.mark.slow  # a training run of the CLI in a subprocess
def test_recipe_trains_the_shipped_model_off_policy(tmp_path):
    """Three FIPO steps of configs/long_sum.yaml, through the CLI: the model moves and the weights leave 1."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    command = [
        *[sys.executable, "-m", "fipo_trl", "train", str(RECIPE), "--output_dir", str(tmp_path / "run")],
        *["--max_steps", "3", "--steps_per_generation", "3", "--per_device_train_batch_size", "16"],
        *["--learning_rate", "1e-3", "--logging_steps", "1", "--save_steps", "3", "--heldout_size", "8"],
        *["--report_to", "none", "--disable_tqdm", "true", "--synthetic_train_size", "64"],
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in log if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3]
    # step 1 is on-policy: every weight is exactly 1; steps 2-3 reuse the batch after an update
    assert steps[0]["fipo/weight_min"] == steps[0]["fipo/weight_max"] == 1.0
    assert any(entry["fipo/weight_min"] < 1.0 or entry["fipo/weight_max"] > 1.0 for entry in steps[1:])
    assert all(entry["fipo/abs_log_ratio_mean"] > 0 for entry in steps[1:])
    for key in ("reward", "completions/mean_length", "clip_ratio/region_mean", "fipo/weight_mean"):
        assert key in steps[0], key
    before = load_file(ASSET / "model.safetensors")
    after = load_file(tmp_path / "run" / "model.safetensors")
    assert any(not torch.equal(before[name], after[name]) for name in before if name in after)
    page = (tmp_path / "run" / "token_view" / "latest.html").read_text()
    assert "↵<br>" in page or "Answer" in page  # a rendered completion, line breaks kept


# ---- the comparison script: it must fail before training, not after ------------------------------------------------


def load_compare():
    spec = importlib.util.spec_from_file_location("compare_dapo_fipo", ROOT / "examples" / "compare_dapo_fipo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_argv(*extra):
    return ["--config", str(RECIPE), "--report_to", "none", "--output_dir", "unused", *extra]


def test_compare_stops_at_start_without_matplotlib(monkeypatch):
    compare = load_compare()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    cli = argparse.Namespace(heldout_size=256)
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        compare.check_start(cli, compare.library(), compare_argv())


def test_compare_stops_at_start_when_no_step_would_be_logged():
    compare = load_compare()
    cli = argparse.Namespace(heldout_size=256)
    with pytest.raises(SystemExit, match="--max_steps 5 < logging_steps 10"):
        compare.check_start(cli, compare.library(), compare_argv("--max_steps", "5"))
    compare.check_start(cli, compare.library(), compare_argv("--max_steps", "10"))  # enough steps: no error


# ---- the comparison grid (regime map): its bookkeeping, without training -------------------------------------------


def grid_row(method, seed, accuracy, length=40.0):
    return {
        "level": "spg8-lr0.0001",
        "method": method,
        "seed": seed,
        "accuracy_before": 0.15,
        "accuracy_after": accuracy,
        "mean_length_after": length,
        "collapsed": accuracy < 0.15,
    }


def test_grid_cell_separates_from_dapo_only_when_the_seed_ranges_do_not_overlap():
    compare = load_compare()
    dapo = [grid_row("dapo", seed, acc) for seed, acc in enumerate((0.60, 0.64, 0.70))]
    overlapping = [grid_row("fipo_high", seed, acc) for seed, acc in enumerate((0.66, 0.71, 0.73))]
    apart = [grid_row("fipo_sym", seed, acc, length=50.0) for seed, acc in enumerate((0.72, 0.75, 0.80))]
    cells = {c["method"]: c for c in compare.cell_table(dapo + overlapping + apart)}
    assert cells["fipo_high"]["separates_accuracy"] is False
    assert cells["fipo_sym"]["separates_accuracy"] is True and cells["fipo_sym"]["separates_mean_length"] is True
    # paired by seed: +0.12, +0.11, +0.10
    assert cells["fipo_sym"]["accuracy_vs_dapo"] == pytest.approx(0.11)
    assert cells["fipo_sym"]["accuracy_vs_dapo_min"] == pytest.approx(0.10)
    assert "separates_accuracy" not in cells["dapo"]


def test_grid_cell_with_one_seed_never_separates():
    compare = load_compare()
    cells = {c["method"]: c for c in compare.cell_table([grid_row("dapo", 0, 0.1), grid_row("fipo_high", 0, 0.9)])}
    assert cells["fipo_high"]["separates_accuracy"] is False


def test_grid_levels_are_the_product_of_the_axes_or_the_listed_pairs():
    compare = load_compare()
    parser = argparse.ArgumentParser()
    axes = argparse.Namespace(steps_per_generation=[8, 32], learning_rate=[1e-4, 1e-3], levels=None)
    assert compare.parse_levels(axes, parser) == [(8, 1e-4), (8, 1e-3), (32, 1e-4), (32, 1e-3)]
    pairs = argparse.Namespace(steps_per_generation=None, learning_rate=None, levels=["8:1e-4", "32:1e-3"])
    assert compare.parse_levels(pairs, parser) == [(8, 1e-4), (32, 1e-3)]
    recipe = argparse.Namespace(steps_per_generation=None, learning_rate=None, levels=None)
    assert compare.parse_levels(recipe, parser) == [(None, None)]
    with pytest.raises(SystemExit):  # both ways at once is ambiguous
        compare.parse_levels(
            argparse.Namespace(steps_per_generation=[8], learning_rate=None, levels=["8:1e-4"]), parser
        )
    # the recipe's level keeps the old run names, so earlier output dirs still resume and redraw
    assert compare.run_name("dapo", 0, (None, None)) == "dapo-seed0"
    assert compare.run_name("fipo_high", 2, (32, 1e-3)) == "fipo_high-spg32-lr0.001-seed2"


def test_weight_modes_set_the_fipo_fields_of_the_7b_pilot_and_of_fipoconfig_defaults():
    from fipo_trl import FIPOConfig

    compare = load_compare()
    lib = compare.library()
    _, pilot, _ = lib.parse_recipe(compare_argv(*compare.method_settings("fipo_sym")))
    _, default, _ = lib.parse_recipe(compare_argv(*compare.method_settings("fipo_high")))
    assert (pilot.fipo_clip_high_only, pilot.fipo_safety_threshold) == (False, 3.0)
    defaults = FIPOConfig.__dataclass_fields__
    assert default.fipo_clip_high_only is defaults["fipo_clip_high_only"].default is True
    assert default.fipo_safety_threshold == defaults["fipo_safety_threshold"].default
    with pytest.raises(SystemExit, match="unknown method 'fipo_low'"):
        compare.method_settings("fipo_low")


@pytest.mark.parametrize("folder", ["regime_map", "regime_map_48steps"])
def test_committed_regime_map_tables_are_what_its_runs_give(folder, tmp_path):
    """The committed grid CSVs are regenerated from the committed run records, not edited by hand."""
    compare = load_compare()
    results = ROOT / "benchmarks" / "results" / folder
    records = [json.loads(path.read_text()) for path in sorted((results / "runs").glob("*.json"))]
    assert len(records) == 27  # 3 methods × 3 levels × 3 seeds
    compare.write_grid(tmp_path, records, "long_sum.yaml")
    for name in ("grid_cells.csv", "grid_runs.csv", "grid_curves.csv"):
        assert (tmp_path / name).read_text() == (results / name).read_text(), name
    cells = list(csv.DictReader((results / "grid_cells.csv").open()))
    assert not any(cell.get("separates_accuracy") == "True" for cell in cells)  # the documented finding
