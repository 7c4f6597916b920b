"""
Bad inputs and faults, tried through the `fipo-trl` command as an unlucky user would: one table, one row per case.

Each row gives the input (recipe fields, command-line flags, files), the exit status and the fragment of the one
error line the user must see (it names the field or file and the fix), and every row checks that nothing already in
`output_dir` was lost or overwritten. Rows that must train (a reward that breaks mid-run, Ctrl-C, a kill during a
save) are marked slow; the others are refused before a model loads.
"""

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST_RUN
from safetensors.torch import load_file, save_file

from fipo_trl.cli import main as fipo_trl


ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "quickstart.yaml"
SHIPPED_MODEL = ROOT / "fipo_trl" / "assets" / "tiny-qwen2-addition"
# conftest's fast run with a checkpoint at every step, 2 steps, no held-out check, no token view
FAST = {
    **FAST_RUN,
    "heldout_size": 0,
    "save_steps": 1,
    "save_total_limit": None,
    "max_steps": 2,
    "report_to": ["none"],
    "token_view": False,
}
pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(path):
    """`{relative path: sha256}` of every file under `path` (or of `path` itself when it is a file)."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def assert_nothing_lost(before, after):
    lost = [name for name in before if name not in after]
    changed = [name for name in before if name in after and after[name] != before[name]]
    assert not lost and not changed, f"lost {lost}, overwritten {changed}"


# ---- inputs of the rows: each builds files under tmp_path and returns the extra flags ----------------------------


def copy_model(tmp_path, change=None):
    """A copy of the shipped model whose weights `change(state_dict)` may edit in place."""
    model = tmp_path / "model"
    model.mkdir()
    for file in SHIPPED_MODEL.iterdir():
        if file.is_file():
            (model / file.name).write_bytes(file.read_bytes())
    if change is not None:
        weights = load_file(str(model / "model.safetensors"))
        change(weights)
        save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model


def truncated_model(tmp_path):
    model = copy_model(tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy that stopped half-way
    return ["--model_name_or_path", str(model)]


def nan_model(tmp_path):
    def poison(weights):
        weights["model.norm.weight"][:] = math.nan

    return ["--model_name_or_path", str(copy_model(tmp_path, poison))]


def data_file(content):
    def make(tmp_path):
        path = tmp_path / "data.jsonl"
        path.write_bytes(content)
        return ["--dataset_name", str(path)]

    return make


def rows_file(rows, name="data.jsonl"):
    """A JSON-lines data file of `rows` (dicts), and the flag that trains on it."""

    def make(tmp_path):
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return ["--dataset_name", str(path)]

    return make


ADDITIONS = [{"prompt": f"{i}+1=?\n", "solution": str(i + 1)} for i in range(64)]


@dataclass
class Case:
    id: str
    message: str  # a regex the one error line must match (after "fipo-trl <command>: error: ")
    recipe: dict = field(default_factory=dict)  # recipe fields changed in the YAML file
    flags: list = field(default_factory=list)  # command-line flags after the recipe
    make: object = None  # callable(tmp_path) -> extra flags, for rows that need files
    command: str = "train"
    status: int = 2
    recipe_text: str | None = None  # the recipe file's text as given, for malformed YAML


def read_only_dir(tmp_path):
    return ["--output_dir", "/sys/fipo-trl-run"]  # refuses new folders even to root, unlike a chmod-ed folder


def output_dir_is_a_file(tmp_path):
    return ["--output_dir", str(tmp_path / "out" / "sentinel.txt")]


CASES = [
    Case("max_steps_0", r"^max_steps: 0 trains nothing; set max_steps > 0", recipe={"max_steps": 0}),
    Case(
        "negative_lr_yaml", r"^learning_rate: -0\.0001 must be a finite number >= 0", recipe={"learning_rate": -1e-4}
    ),
    # `--learning_rate -1e-4` is a value, not a flag: the error is about the value
    Case("negative_lr_flag", r"^learning_rate: -0\.0001 must be", flags=["--learning_rate", "-1e-4"]),
    Case(
        "bad_int_flag", r"^argument --max_steps/--max-steps: invalid int value: 'abc'$", flags=["--max_steps", "abc"]
    ),
    Case("unknown_field", r"^unknown recipe field\(s\): learning_rat", recipe={"learning_rat": 1e-5}),
    Case(
        "malformed_yaml",
        r"recipe\.yaml:3:10: expected ',' or '\]', but got ':' \(while parsing a flow sequence, which starts at",
        recipe_text="seed: 0\nlearning_rate: [1\nmax_steps: 2\n",
    ),
    Case(
        "malformed_yaml_check",
        r"recipe\.yaml:2:13: mapping values are not allowed here",
        recipe_text="seed: 0\nmax_steps: 2: 3\n",
        command="check",
    ),
    Case("check_zero_processes", r"^--num_processes 0: .*at least 1", flags=["--num_processes", "0"], command="check"),
    Case("empty_data", r"data\.jsonl is empty: a dataset needs at least one row", make=data_file(b"")),
    Case(
        "non_utf8_data",
        r"data\.jsonl, row 2: byte 0xff at column 13 is not UTF-8: save the file as UTF-8",
        make=data_file(b'{"prompt": "1+1=?", "solution": "2"}\n{"prompt": "\xff+1=?", "solution": "3"}\n'),
    ),
    Case(
        "missing_model_dir",
        r"no such model directory: \./no-such-model \(model_name_or_path takes a model folder or a Hub id\)$",
        flags=["--model_name_or_path", "./no-such-model"],
    ),
    # "models/x" could be a Hub id too: offline and not cached, it is neither
    Case(
        "missing_model_dir_like_hub_id",
        r"no such model directory: models/no-such-model \(and no Hub model of that id is cached, which HF_HUB_OFFLINE",
        flags=["--model_name_or_path", "models/no-such-model"],
    ),
    Case("output_dir_is_a_file", r"^output_dir: .*sentinel\.txt is a file, not a folder", make=output_dir_is_a_file),
    Case("output_dir_read_only", r"^output_dir: cannot write to /sys/fipo-trl-run", make=read_only_dir),
    Case(
        "truncated_weights", r"model/model\.safetensors: cannot be read .*truncated or corrupt", make=truncated_model
    ),
    Case(
        "nan_weights", r"model/model\.safetensors: tensor 'model\.norm\.weight' has \d+ NaN/inf values", make=nan_model
    ),
    Case(
        "eval_truncated_weights",
        r"^.*model/model\.safetensors: cannot be read .*truncated or corrupt",
        flags=["--dataset", "synthetic", "--k", "1", "--max_tokens", "4"],
        make=truncated_model,
        command="eval",
    ),
    Case(
        "malformed_accelerate_config",
        r"zero\.yaml:3:1: could not find expected ':' \(while scanning a simple key, which starts at line 2\)$",
        make=lambda tmp_path: ["--config_file", str(write_file(tmp_path / "zero.yaml", BROKEN_ACCELERATE_CONFIG))],
        command="check",
    ),
    # the spelling: the dashed flag of earlier versions, still accepted
    Case(
        "resume_from_incomplete_folder",
        r"^resume_from_checkpoint='.*checkpoint-9' is incomplete \(no trainer_state\.json\); the newest complete one "
        r"is .*checkpoint-7$",
        make=lambda tmp_path: ["--resume_from_checkpoint", str(empty_folder(tmp_path / "out" / "checkpoint-9"))],
    ),
    # checkpoint-7 of the seeded output_dir has a model.safetensors of 128 zero bytes
    Case(
        "resume_with_corrupt_weights",
        r"^.*out/checkpoint-7/model\.safetensors: cannot be read \(.*\): the file is truncated or corrupt",
        flags=["--resume_from_checkpoint", "last"],
    ),
    # the same command again, without a resume flag, would overwrite the earlier run's checkpoints one by one
    Case(
        "fresh_run_into_a_folder_with_checkpoints",
        r"^output_dir .*out already holds checkpoints of an earlier run \(checkpoint-7\): continue it with "
        r"--resume_from_checkpoint auto, or start over with --overwrite_output_dir true \(deletes them\)$",
    ),
    Case(
        "resume_from_another_architecture",
        r"^resume_from_checkpoint: .*out/checkpoint-7 holds another model than "
        r"model_name_or_path=.*tiny-qwen2-addition \(hidden_size 64 vs \d+, num_hidden_layers 3 vs \d+\): resume "
        r"with the model it was trained from, or start a fresh run in another output_dir$",
        flags=["--resume_from_checkpoint", "last"],
        make=lambda tmp_path: other_architecture(tmp_path / "out" / "checkpoint-7"),
    ),
    # another run holds the folder: pid 1 on this host is alive
    Case(
        "output_dir_locked_by_a_live_run",
        r"^output_dir .*out is in use by another run \(host .*, pid 1, Slurm job 99, "
        r"started 2026-01-01T00:00:00\+00:00; heartbeat \d+ s ago\): wait for it to end or choose another "
        r"output_dir; if that run is dead, delete .*out/fipo_run\.lock$",
        make=lambda tmp_path: lock_held_by_pid_1(tmp_path / "out"),
    ),
]


# what a run trains on or with, refused before the model loads (issue 15)
CASES += [
    # FAST: a generation batch of 32 completions = 8 prompts; TRL's sampler yields only full batches
    Case(
        "fewer_prompts_than_a_generation_batch",
        r"data\.jsonl has 3 training prompts, fewer than one generation batch of 8 \(generation_batch_size 32 / "
        r"num_generations 4\), so no step would train",
        make=rows_file(ADDITIONS[:3]),
    ),
    Case(
        "list_solutions",
        r"data\.jsonl, row 1: solution is a list \(\['1'\]\); write one answer per row",
        make=rows_file([{**row, "solution": [row["solution"]]} for row in ADDITIONS]),
    ),
    Case(
        "heldout_size_takes_every_row",
        r"^heldout_size: 64 held-out rows would leave none of the 64 rows of .*data\.jsonl to train on",
        flags=["--heldout_size", "64"],
        make=rows_file(ADDITIONS),
    ),
    Case("heldout_size_negative", r"^heldout_size: -1 must be >= 0", flags=["--heldout_size", "-1"]),
    Case(
        "synthetic_task_unknown",
        r"^synthetic_task: 'bogus' is not one of addition",
        flags=["--synthetic_task", "bogus"],
    ),
    Case(
        "chat_prompts_without_chat_template",
        r"data\.jsonl: the prompts are chat messages but the tokenizer of .* has no chat template",
        make=rows_file([{**row, "prompt": [{"role": "user", "content": row["prompt"]}]} for row in ADDITIONS]),
    ),
    Case("temperature_0", r"^temperature: 0\.0 must be > 0", flags=["--temperature", "0"]),
    Case("top_p_above_1", r"^top_p: 1\.5 must be in \(0, 1\]", flags=["--top_p", "1.5"]),
    # the shipped model has 64 positions
    Case(
        "completion_past_the_model_positions",
        r"^max_completion_length: the longest training prompt \(\d+ tokens, row \d+\) \+ max_completion_length 100 "
        r"= \d+ tokens, more than the 64 positions of .*: lower max_completion_length to \d+$",
        flags=["--max_completion_length", "100"],
    ),
    Case(
        "prompts_past_the_model_positions",
        r"^max_completion_length: the longest training prompt \(\d+ tokens, row 3\) .* more than the 64 positions .* "
        r"set max_prompt_length to 52 or less$",
        make=rows_file([{**row, "prompt": row["prompt"] * (30 if i == 2 else 1)} for i, row in enumerate(ADDITIONS)]),
    ),
    Case(
        "reward_funcs_a_string_in_yaml",
        r"recipe\.yaml: reward_funcs: 'dapo_accuracy' is a str, expected list\[str\] \(\[a, b\] in YAML\)$",
        recipe={"reward_funcs": "dapo_accuracy"},
    ),
    Case(
        "learning_rate_a_list_in_yaml",
        r"recipe\.yaml: learning_rate: \[0\.001\] is a list, expected float$",
        recipe={"learning_rate": [1e-3]},
    ),
    Case(
        "max_steps_a_float_in_yaml",
        r"recipe\.yaml: max_steps: 2\.5 is a float, expected int$",
        recipe={"max_steps": 2.5},
    ),
    Case(
        "reward_funcs_joined_by_commas",
        r"unknown reward function 'dapo_accuracy,soft_overlong': .*; separate names with spaces, not commas$",
        flags=["--reward_funcs", "dapo_accuracy,soft_overlong"],
    ),
    Case(
        "reward_not_a_function",
        r"^reward function 'fault_rewards\.NOT_A_FUNCTION' is a float, not a function",
        flags=["--reward_funcs", "fault_rewards.NOT_A_FUNCTION"],
    ),
]


# refused before the model loads (issue 21): what would train nothing, mean nothing, or be read as it is not written
CASES += [
    Case(
        "num_train_epochs_0",
        r"^num_train_epochs: 0 trains nothing with max_steps -1; set num_train_epochs > 0, or max_steps > 0$",
        recipe={"max_steps": -1, "num_train_epochs": 0},
    ),
    Case(
        "grace_period_negative",
        r"^preemption_grace_period: -1\.0 must be a number of seconds >= 0 \(0 stops at once on SIGTERM",
        flags=["--preemption_grace_period", "-1"],
    ),
    Case(
        "num_generations_null",
        r"recipe\.yaml: num_generations: null is not a value the config can use here \(unsupported operand .*\): "
        r"give a value, or delete the line for the default$",
        recipe={"num_generations": None},
    ),
    Case(
        "a_key_given_twice",
        r"recipe\.yaml:3:1: seed is given twice \(first at line 1\): keep one$",
        recipe_text="seed: 1\nmax_steps: 2\nseed: 3\n",
    ),
    Case(
        "hash_without_a_space_in_a_value",
        r"recipe\.yaml:1:13: 'out/run# local' has a '#' with no space before it, which YAML keeps in the value: write "
        r"' #' for a comment, or quote the value$",
        recipe_text="output_dir: out/run# local\n",
    ),
    Case(
        "reward_module_with_a_syntax_error",
        r"^cannot import reward function 'broken_syntax_reward\.score': SyntaxError: '\[' was never closed at "
        r".*broken_syntax_reward\.py:2$",
        make=lambda tmp_path: broken_reward_module(tmp_path),
    ),
    # a checkpoint-7 that has trained 7 steps (with sound weights); FAST asks for 2
    Case(
        "max_steps_below_the_checkpoint",
        r"^max_steps: 2 is below the 7 steps .*out/checkpoint-7 has already trained: resuming cannot untrain them; "
        r"set max_steps to 7 or more, or use .*checkpoint-7 as model_name_or_path of a new run$",
        flags=["--resume_from_checkpoint", "auto"],
        make=lambda tmp_path: seeded_with_sound_weights(tmp_path / "trained" / "out"),
    ),
    Case(
        "auto_with_overwrite_output_dir",
        r"^resume_from_checkpoint=auto with overwrite_output_dir=true: one continues the earlier run, the other "
        r"deletes it; drop --overwrite_output_dir to continue, or --resume_from_checkpoint to start over$",
        flags=["--resume_from_checkpoint", "auto", "--overwrite_output_dir", "true"],
    ),
]


def seeded_with_sound_weights(out):
    """Another output_dir seeded like the test's, its checkpoint-7 with the shipped model's weights."""
    seed_output_dir(out)
    (out / "checkpoint-7" / "model.safetensors").write_bytes((SHIPPED_MODEL / "model.safetensors").read_bytes())
    return ["--output_dir", str(out)]


def broken_reward_module(tmp_path):
    """A reward module next to the recipe (the working directory) that does not parse."""
    write_file(tmp_path / "broken_syntax_reward.py", "def score(completions, **kwargs):\n    return [0.0\n")
    return ["--reward_funcs", "broken_syntax_reward.score"]


def other_architecture(checkpoint):
    """A checkpoint whose config.json is the shipped model's with other layer sizes."""
    config = json.loads((SHIPPED_MODEL / "config.json").read_text())
    config.update(hidden_size=64, num_hidden_layers=3)
    (checkpoint / "config.json").write_text(json.dumps(config))
    return []


def lock_held_by_pid_1(out):
    import socket

    holder = {"host": socket.gethostname(), "pid": 1, "slurm_job_id": "99", "started": "2026-01-01T00:00:00+00:00"}
    (out / "fipo_run.lock").write_text(json.dumps(holder))
    return []


BROKEN_ACCELERATE_CONFIG = "distributed_type: DEEPSPEED\nnum_processes 2\nmixed_precision: bf16\n"  # a lost ':'


def write_file(path, text):
    path.write_text(text)
    return path


def empty_folder(path):
    path.mkdir()
    return path


def write_recipe(tmp_path, case, out):
    path = tmp_path / "recipe.yaml"
    if case.recipe_text is not None:
        path.write_text(case.recipe_text)
        return path
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(FAST, output_dir=str(out), **case.recipe)
    path.write_text(yaml.safe_dump(recipe))
    return path


def seed_output_dir(out):
    """An output_dir that already holds a file and a checkpoint of an earlier run."""
    (out / "checkpoint-7").mkdir(parents=True)
    (out / "sentinel.txt").write_text("an earlier run's notes")
    (out / "checkpoint-7" / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    (out / "checkpoint-7" / "model.safetensors").write_bytes(b"\0" * 128)


def run_cli(capsys, argv):
    status = fipo_trl(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if ": error: " in line or ": failed: " in line]
    assert "Traceback" not in captured.err, captured.err
    return status, errors, captured


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_loses_nothing(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    seed_output_dir(out)
    before = snapshot(out)
    extra = case.make(tmp_path) if case.make else []
    recipe = [] if case.command == "eval" else [str(write_recipe(tmp_path, case, out))]
    argv = [case.command, *recipe, *case.flags, *extra]
    status, errors, captured = run_cli(capsys, argv)
    assert status == case.status, captured.err
    assert len(errors) == 1, captured.err
    prefix = f"fipo-trl {case.command}: error: "
    assert errors[0].startswith(prefix) and errors[0].count("error:") == 1, errors[0]
    assert_nothing_lost(before, snapshot(out))
    assert re.search(case.message, errors[0][len(prefix) :]), errors[0]


def mount_tmpfs(disk, size):
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs needs root")
    return disk


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: too small for one checkpoint of the shipped model (~9 MB with its AdamW state)."""
    yield mount_tmpfs(tmp_path / "disk", "1M")
    subprocess.run(["umount", "--lazy", str(tmp_path / "disk")], check=True)  # even while a file in it is open


@pytest.fixture
def disk_for_one_checkpoint(tmp_path):
    """A 14 MiB tmpfs: room for one checkpoint of the shipped model (~9.6 MB), not for two."""
    yield mount_tmpfs(tmp_path / "disk", "14M")
    subprocess.run(["umount", "--lazy", str(tmp_path / "disk")], check=True)  # even while a file in it is open


@pytest.mark.slow
def test_a_disk_that_fills_during_training_ends_in_one_line(disk_for_one_checkpoint, tmp_path, capsys):
    # the pre-flight check passes (one checkpoint fits); the second save fills the disk: it was a torch traceback
    out = disk_for_one_checkpoint / "out"
    recipe = write_recipe(tmp_path, Case("full_disk", "", recipe={"max_steps": 4}), out)
    status, errors, captured = run_cli(capsys, ["train", str(recipe)])
    assert status == 3 and len(errors) == 1, captured.err
    assert re.search(
        r"^fipo-trl train: failed: no space left on the disk of output_dir .*disk/out \(0\.\d MB free\) while saving "
        r"a checkpoint: free some space \(or lower save_total_limit\) and resume \(at step \d+; last checkpoint: "
        r"\S+checkpoint-1; " + RESUME_LINE,
        errors[0],
    ), errors[0]
    assert not (out / "fipo_run.lock").exists()


def test_a_disk_too_small_for_a_checkpoint_is_refused_before_training(small_disk, tmp_path, capsys):
    # without the check, the run trained and then died at its first save: "No space left on device", a traceback
    out = small_disk / "out"
    seed_output_dir(out)
    before = snapshot(out)
    recipe = write_recipe(tmp_path, Case("small_disk", ""), out)
    status, errors, captured = run_cli(capsys, ["train", str(recipe)])
    assert status == 2 and len(errors) == 1, captured.err
    assert re.search(
        r"error: output_dir: .*disk/out has 1\.0 MB free, but one checkpoint of this model needs about \d+\.\d MB "
        r"\(weights \+ AdamW state\): free some space or choose an output_dir on a larger disk$",
        errors[0],
    ), errors[0]
    assert_nothing_lost(before, snapshot(out))


# ---- faults during training: each row trains a few steps ---------------------------------------------------------


@dataclass
class RunCase:
    id: str
    message: str  # regex for the one line on stderr; "" for a run that must succeed
    recipe: dict = field(default_factory=dict)
    status: int = 3  # a failure during training (TrainingError)
    stdout: str = ""  # regex the standard output must match


RESUME_LINE = r"resume with: fipo-trl train \S+recipe\.yaml --resume_from_checkpoint last\)$"


RUN_CASES = [
    RunCase(
        "nan_reward",
        r"^fipo-trl train: failed: reward 'fault_rewards\.nan_reward' returned NaN for every completion of 3 batches "
        r"in a row: .* \(at step 5; last checkpoint: \S+checkpoint-4; " + RESUME_LINE,
        recipe={"reward_funcs": ["fault_rewards.nan_reward"], "max_steps": 10},
    ),
    RunCase(
        "none_reward",
        r"^fipo-trl train: failed: reward 'fault_rewards\.none_reward' returned None or NaN for every completion of 3 "
        r"batches in a row: .*checkpoint-4",
        recipe={"reward_funcs": ["fault_rewards.none_reward"], "max_steps": 10},
    ),
    RunCase(
        "raising_reward",
        r"^fipo-trl train: failed: reward 'fault_rewards\.raising_reward' raised ValueError: cannot parse the "
        r"completion at .*fault_rewards\.py:\d+ \(at step 3; last checkpoint: \S+checkpoint-2; " + RESUME_LINE,
        recipe={"reward_funcs": ["dapo_accuracy", "fault_rewards.raising_reward"], "max_steps": 4},
    ),
    RunCase(
        "ctrl_c_before_the_first_checkpoint",
        r"^fipo-trl train: interrupted at step 1; no checkpoint yet \(save_steps=1\)$",  # no resume command to offer
        recipe={"reward_funcs": ["fault_rewards.interrupting_reward"]},
        status=130,
    ),
    RunCase(
        "strings_reward",
        r"^fipo-trl train: failed: reward 'fault_rewards\.strings_reward' returned '1\.0' \(str\) for completion 0: a "
        r"reward is a float, or None where it does not apply \(at step 1; no checkpoint yet \(save_steps=1\)\)$",
        recipe={"reward_funcs": ["fault_rewards.strings_reward"]},
    ),
    # 8 prompts per generation batch (FAST): 64 prompts without spread take 8 batches, generated at steps 0, 2, ..., 14
    RunCase(
        "no_reward_spread",
        r"^fipo-trl train: failed: every group of the last 8 generation batches \(64 prompts\) got the same reward "
        r"for all its completions: every advantage is 0 .* \(after step 15; last checkpoint: \S+checkpoint-14; "
        + RESUME_LINE,
        recipe={"reward_funcs": ["fault_rewards.constant_reward"], "max_steps": 20},
    ),
    # inf for every completion trained 24 steps at reward inf and loss 0, and exited 0
    RunCase(
        "inf_reward",
        r"^fipo-trl train: failed: reward 'fault_rewards\.inf_reward' returned inf for completion 0: a reward must be "
        r"finite \(return None where it does not apply\); fix the reward function \(at step 1; no checkpoint yet "
        r"\(save_steps=1\)\)$",
        recipe={"reward_funcs": ["fault_rewards.inf_reward"]},
    ),
    # a reward without scores for one batch logs a NaN reward: the run goes on and the summary still prints
    RunCase(
        "summary_with_nan_reward_log",
        "",
        recipe={"reward_funcs": ["fault_rewards.none_at_first_reward"], "max_steps": 4},
        status=0,
        stdout=r"FIPO run finished: 4 optimizer steps.*\nMean training reward: first log [+-]\d\.\d{3} \(step 3\)",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", RUN_CASES, ids=[case.id for case in RUN_CASES])
def test_fault_during_training_is_one_line_with_the_last_checkpoint(case, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # the recipe names rewards of tests/fault_rewards.py
    out = tmp_path / "out"
    out.mkdir()
    (out / "sentinel.txt").write_text("an earlier run's notes")
    before = snapshot(out)
    recipe = write_recipe(tmp_path, Case(case.id, "", recipe=case.recipe), out)
    status, errors, captured = run_cli(capsys, ["train", str(recipe)])
    assert status == case.status, captured.err
    assert_nothing_lost(before, snapshot(out))
    if case.message:
        lines = [line for line in captured.err.splitlines() if line.startswith("fipo-trl train:")]
        assert len(lines) == 1 and re.search(case.message, lines[0]), captured.err
    else:
        assert not errors, captured.err
    assert re.search(case.stdout, captured.out, re.DOTALL), captured.out


@pytest.mark.slow
def test_debug_switch_shows_the_chained_cause_of_a_training_failure(tmp_path, capsys, monkeypatch):
    # FIPO_TRL_DEBUG=1: the reward's own ValueError and the line it became, as one chained traceback
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("FIPO_TRL_DEBUG", "1")
    rewards = ["dapo_accuracy", "fault_rewards.raising_reward"]
    case = Case("raising_reward", "", recipe={"reward_funcs": rewards, "max_steps": 4})
    status = fipo_trl(["train", str(write_recipe(tmp_path, case, tmp_path / "out"))])
    err = capsys.readouterr().err
    assert status == 3, err
    assert "Traceback" in err and "The above exception was the direct cause of the following exception" in err
    assert 'fault_rewards.py", line' in err and "ValueError: cannot parse the completion" in err
    assert re.search(r"TrainingError: reward 'fault_rewards\.raising_reward' raised ValueError: .* \(at step 3", err)


def test_debug_switch_shows_where_a_config_check_failed(tmp_path, capsys, monkeypatch):
    # parse_recipe keeps FIPOConfig's own ValueError as the cause of its one line: the debug switch shows config.py
    recipe = write_recipe(tmp_path, Case("decay", "", recipe={"fipo_decay_rate": -1.0}), tmp_path / "out")
    assert fipo_trl(["train", str(recipe)]) == 2
    assert capsys.readouterr().err.startswith("fipo-trl train: error: fipo_decay_rate must be > 0")
    monkeypatch.setenv("FIPO_TRL_DEBUG", "1")
    assert fipo_trl(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "The above exception was the direct cause of the following exception" in err
    assert re.search(r'fipo_trl/config\.py", line \d+, in __post_init__', err), err
    assert "UsageError: fipo_decay_rate must be > 0" in err.splitlines()[-1]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """output_dir of a 2-step run: checkpoint-1 and checkpoint-2, both complete."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("two-steps") / "out"
    recipe = write_recipe(out.parent, Case("base", ""), out)
    try:
        assert fipo_trl(["train", str(recipe)]) == 0
    finally:
        torch.set_num_threads(threads)
    return recipe, out


def copy_run(two_checkpoints, tmp_path):
    import shutil

    recipe, out = two_checkpoints
    shutil.copytree(out, tmp_path / "out")
    return recipe, tmp_path / "out"


def resume(capsys, recipe, out, max_steps=3):
    argv = ["train", str(recipe), "--output_dir", str(out), "--max_steps", str(max_steps)]
    return run_cli(capsys, [*argv, "--resume_from_checkpoint", "last"])


def global_step(checkpoint):
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda folder: (folder / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda folder: [file.unlink() for file in folder.iterdir()], "no trainer_state.json"),
        (lambda folder: (folder / "model.safetensors").write_bytes(b"\0" * 64), "model.safetensors has 64 bytes"),
        (lambda folder: (folder / "checkpoint_complete.json").unlink(), "no checkpoint_complete.json"),
    ],
    ids=["no_trainer_state", "empty", "truncated_weights", "no_marker"],
)
def test_resume_skips_an_incomplete_newest_checkpoint(two_checkpoints, tmp_path, capsys, caplog, damage, reason):
    recipe, out = copy_run(two_checkpoints, tmp_path)
    damage(out / "checkpoint-2")
    kept = snapshot(out / "checkpoint-1")
    status, errors, captured = resume(capsys, recipe, out)
    assert status == 0 and not errors, captured.err
    assert f"checkpoint-2: {reason}" in caplog.text and "Using " + str(out / "checkpoint-1") in caplog.text
    # resumed from step 1: steps 2 and 3 were trained again and saved complete
    assert global_step(out / "checkpoint-3") == 3 and global_step(out / "checkpoint-2") == 2
    assert_nothing_lost(kept, snapshot(out / "checkpoint-1"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "interrupted",
    ["transformers.trainer.Trainer._save_rng_state", "transformers.trainer.rotate_checkpoints"],
    ids=["before_trainer_state", "after_trainer_state"],
)
def test_save_interrupted_by_a_kill_never_looks_complete(tmp_path, capsys, caplog, monkeypatch, interrupted):
    # the save of checkpoint-2 stops half-way, as a kill would stop it: before or after trainer_state.json is written
    import transformers.trainer

    owner, name = interrupted.rsplit(".", 1)
    target = transformers.trainer.Trainer if owner.endswith("Trainer") else transformers.trainer
    original = getattr(target, name)

    def killed(*args, **kwargs):
        if (tmp_path / "out" / "checkpoint-2").is_dir():
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, killed)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, Case("kill", ""), out)
    status, errors, captured = run_cli(capsys, ["train", str(recipe)])
    assert status == 130, captured.err
    assert (out / "checkpoint-2" / "model.safetensors").is_file()  # the save had begun
    monkeypatch.setattr(target, name, original)
    status, errors, captured = resume(capsys, recipe, out)
    assert status == 0, captured.err
    assert "checkpoint-2: no" in caplog.text and "Using " + str(out / "checkpoint-1") in caplog.text


def default_sigint():
    """In a child about to start: Python's Ctrl-C, whatever the test runner's SIGINT disposition is."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_exits_quietly_and_says_how_to_resume(tmp_path):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, Case("ctrl_c", "", recipe={"max_steps": 500}), out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "fipo_trl", "train", str(recipe)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=default_sigint,  # a runner started with `cmd &` ignores SIGINT, and its children inherit that
    )
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-2" / "checkpoint_complete.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("fipo-trl train:")]
    assert len(lines) == 1, stderr
    assert re.match(
        r"fipo-trl train: interrupted at step \d+; last checkpoint: .*checkpoint-\d+; "
        r"resume with: fipo-trl train .*recipe\.yaml --resume_from_checkpoint last$",
        lines[0],
    ), lines[0]


def troubleshooting_console_examples():
    """`(setup, argv, expected line)` of each `$ command` in the console block of docs/troubleshooting.md."""
    import shlex

    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    section = page[page.index("## Refused before anything loads") :]
    block = section[
        section.index("```console") + len("```console") : section.index("```\n", section.index("```console") + 3)
    ]
    examples, lines = [], block.strip().splitlines()
    for command, expected in zip(lines[::2], lines[1::2], strict=True):
        assert command.startswith("$ ") and not expected.startswith("$ "), (command, expected)
        setup, _, call = command[2:].rpartition("fipo-trl ")
        examples.append((setup.removesuffix(" && "), shlex.split(call), expected))
    return examples


def test_troubleshooting_examples_print_what_the_page_shows(tmp_path, capsys, monkeypatch):
    # in order, in one folder, as a reader would type them (a later command may use an earlier one's file)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "README.md").write_text("a file in the working directory")
    for setup, argv, expected in troubleshooting_console_examples():
        if setup:
            subprocess.run(["bash", "-c", setup], check=True)
        status, errors, captured = run_cli(capsys, argv)
        assert status == 2 and errors == [expected], captured.err


# ---- the experiment tracker --------------------------------------------------------------------------------------


@pytest.fixture
def no_wandb_setting(tmp_path, monkeypatch):
    """`WANDB_MODE` unset and no API key anywhere wandb looks (environment, ~/.netrc)."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.setenv(name, "")  # so that teardown restores the session's value, or its absence:
        monkeypatch.delenv(name)  # set_up_wandb sets WANDB_MODE and WANDB_DIR
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))


def wandb_args(out):
    from types import SimpleNamespace

    return SimpleNamespace(report_to=["wandb"], output_dir=str(out), process_index=0)


def test_wandb_without_an_api_key_logs_offline_and_says_so(no_wandb_setting, tmp_path, caplog):
    # it was a wandb traceback after the model had loaded
    from fipo_trl.run.setup import set_up_wandb

    set_up_wandb(wandb_args(tmp_path / "out"))
    assert os.environ["WANDB_MODE"] == "offline"
    assert [record.getMessage() for record in caplog.records] == [
        f"wandb: no API key (set WANDB_API_KEY or run `wandb login`): logging offline to {tmp_path / 'out'}/wandb "
        "(`wandb sync` uploads it later; set WANDB_MODE to choose)"
    ]


def test_wandb_with_a_key_and_no_network_logs_offline_and_says_so(no_wandb_setting, tmp_path, monkeypatch, caplog):
    # it waited ~110 s for the network, then a traceback; a closed local port answers at once, as a firewall may
    monkeypatch.setenv("WANDB_API_KEY", "bogus" * 8)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    from fipo_trl.run.setup import set_up_wandb

    set_up_wandb(wandb_args(tmp_path / "out"))
    assert os.environ["WANDB_MODE"] == "offline"
    assert re.fullmatch(
        r"wandb: 127\.0\.0\.1:\d+ cannot be reached \(Connection refused\): logging offline to .*", caplog.messages[0]
    ), caplog.messages


def test_wandb_mode_online_without_a_key_is_refused(no_wandb_setting, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    from fipo_trl.errors import UsageError
    from fipo_trl.run.setup import set_up_wandb

    with pytest.raises(
        UsageError, match=r"^WANDB_MODE=online but no API key \(set WANDB_API_KEY or run `wandb login`\)"
    ):
        set_up_wandb(wandb_args(tmp_path / "out"))


def closed_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens on it once the socket is closed


@pytest.mark.slow
def test_a_run_without_wandb_settings_trains_offline_after_one_line(no_wandb_setting, tmp_path):
    # a process of its own: wandb keeps the settings of its first run in a process for every later one
    out = tmp_path / "out"
    fields = {"report_to": ["wandb"], "max_steps": 1, "env": {"HF_HUB_OFFLINE": "1"}}  # no WANDB_MODE
    recipe = write_recipe(tmp_path, Case("wandb", "", recipe=fields), out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "fipo_trl", "train", str(recipe)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("wandb: no API key") == 1, result.stderr
    assert list((out / "wandb").glob("offline-run-*"))  # the run's metrics, for `wandb sync`


# ---- shipped files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_yaml_reads_as_it_is_written(path):
    # a key given twice or `value# comment` (no space: YAML keeps it in the value) is refused by read_yaml_file
    from fipo_trl.cli.recipe import read_yaml_file

    read_yaml_file(path)
    assert not [value for value in strings(yaml.safe_load(path.read_text())) if "#" in value]


def strings(node):
    """Every string value in a parsed YAML document."""
    if isinstance(node, dict):
        return [item for value in node.values() for item in strings(value)]
    if isinstance(node, list):
        return [item for value in node for item in strings(value)]
    return [node] if isinstance(node, str) else []


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    # `fipo-trl train --help | head` ended in a BrokenPipeError traceback; a pipe closed before the child writes
    # is the same, every time
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        for argv in (["--help"], ["train", "--help"]):
            command = [sys.executable, "-m", "fipo_trl", *argv]
            result = subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
            assert result.stderr == "", result.stderr
    finally:
        os.close(write)


def test_train_help_with_a_recipe_lists_the_recipe_values(tmp_path, capsys):
    # it showed the code's defaults only (max_steps -1), though the README says it lists the recipe's fields
    recipe = write_recipe(tmp_path, Case("help", "", recipe={"max_steps": 7}), tmp_path / "out")
    assert fipo_trl(["train", str(recipe), "--help"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == f"fields of {recipe} (override any with --field value):"
    assert "  --max_steps 7" in out and "  --model_name_or_path 'fipo_trl/assets/tiny-qwen2-addition'" in out
