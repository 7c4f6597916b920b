"""
`fipo-trl train` under the real `accelerate launch` on a machine without a GPU: DeepSpeed ZeRO-3, DDP and FSDP2 on 2
gloo processes through the CLI itself (no wrapper script), what a run says it trains on, and the launch that is
refused because it would train one process where two were asked for ([`fipo_trl.run.launch`]).

    accelerate launch --config_file CONFIG --num_processes 2 --mixed_precision no -m fipo_trl train RECIPE ...
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAST_RUN, free_port
from safetensors.torch import load_file

from fipo_trl.errors import UsageError
from fipo_trl.run import launch
from fipo_trl.run.checkpoints import incomplete_reason


ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "quickstart.yaml"
FAST = {**FAST_RUN, "heldout_size": 0, "save_steps": 2, "save_total_limit": None, "report_to": ["none"]}
TIMEOUT = 300  # seconds for a launch on 2 busy cores


def write_recipe(folder, **changes):
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(FAST, token_view=False, output_dir=str(folder / "out"), **changes)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def accelerate_launch(launcher_flags, recipe, *flags, log):
    """`accelerate launch LAUNCHER_FLAGS -m fipo_trl train RECIPE FLAGS` on loopback, in a process group of its own."""
    env = {
        **os.environ,
        # tests/ for the rewards named by dotted path
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "DS_ACCELERATOR": "cpu",  # DeepSpeed's own device detection, which would otherwise fail without CUDA
        "PYTHONWARNINGS": "ignore",
    }
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher_flags, "--mixed_precision", "no"]
    command += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    command += ["-m", "fipo_trl", "train", str(recipe), *flags]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=log.with_suffix(".err").open("w"), env=env,
                            start_new_session=True)  # fmt: skip


def finished(process, log):
    status = process.wait(timeout=TIMEOUT)
    assert status == 0, log.with_suffix(".err").read_text()[-4000:]
    return log.read_text()


def announced(stdout, what):
    """The run said at its start and on its final screen what it trained on, once each (the main process)."""
    assert stdout.count(f"fipo-trl train: training on {what}\n") == 1, stdout[-3000:]
    assert stdout.count(f"Trained on:        {what}\n") == 1, stdout[-3000:]


def trained_on_both_ranks(checkpoint, step):
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == step
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}  # one per rank
    assert incomplete_reason(checkpoint, marker_required=True) is None
    return state


@pytest.mark.slow  # 3 launches of 2 processes
def test_zero3_cli_checks_evaluates_and_resumes_after_sigterm_as_an_uninterrupted_run(tmp_path, tiny_model_dir):
    from test_distributed import partitioning_zero3_config

    config = partitioning_zero3_config(tmp_path)  # the tiny model's parameters really partitioned
    problems = tmp_path / "sums.jsonl"
    problems.write_text("".join(f'{{"problem": "{i}+{i}=?", "answer": "{2 * i}"}}\n' for i in range(3)))
    # 5 held-out problems and 3 evaluation problems: shares of unequal size, padded so both ranks generate alike
    # the tiny chat model (benchmark prompts are chat messages), scored by a reward that varies within a group
    fields = {"max_steps": 8, "heldout_size": 5, "model_name_or_path": tiny_model_dir}
    fields.update(reward_funcs=["test_distributed.reward_digits"])
    fields.update(math_eval_datasets=[str(problems)], math_eval_steps=4, math_eval_k=1)
    launcher, flags = ["--config_file", config, "--num_processes", "2"], ["--resume_from_checkpoint", "auto"]
    for name in ("whole", "requeued"):
        (tmp_path / name).mkdir()
        write_recipe(tmp_path / name, **fields)
    whole = tmp_path / "whole"
    stdout = finished(
        accelerate_launch(launcher, whole / "recipe.yaml", *flags, log=whole / "run.log"), whole / "run.log"
    )
    announced(stdout, "2 processes (DeepSpeed ZeRO-3)")
    assert "Held-out accuracy before training:" in stdout and "Held-out accuracy (5 problems" in stdout
    state = trained_on_both_ranks(whole / "out" / "checkpoint-8", 8)
    assert [e["step"] for e in state["log_history"] if "eval_sums/avg@1" in e] == [4, 8]  # MathEvalCallback ran

    requeued = tmp_path / "requeued"
    first = accelerate_launch(launcher, requeued / "recipe.yaml", *flags, log=requeued / "first.log")
    marker = requeued / "out" / "checkpoint-2" / "checkpoint_complete.json"
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert first.poll() is None and time.monotonic() < deadline, (requeued / "first.err").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGTERM)  # every process of the launch, as Slurm preempts a job step
    first.wait(timeout=TIMEOUT)
    stopped = [line for line in (requeued / "first.err").read_text().splitlines() if "stopped by SIGTERM" in line]
    assert len(stopped) == 1 and stopped[0].startswith("fipo-trl train: stopped by SIGTERM after step"), stopped
    assert not (requeued / "out" / "model.safetensors").exists()
    again = accelerate_launch(launcher, requeued / "recipe.yaml", *flags, log=requeued / "again.log")
    announced(finished(again, requeued / "again.log"), "2 processes (DeepSpeed ZeRO-3)")
    trained_on_both_ranks(requeued / "out" / "checkpoint-8", 8)
    expected, resumed = (
        load_file(whole / "out" / "model.safetensors"),
        load_file(requeued / "out" / "model.safetensors"),
    )
    assert expected.keys() == resumed.keys()
    assert all((expected[name] == resumed[name]).all() for name in expected)


@pytest.mark.slow  # 1 launch of 2 processes
def test_ddp_cli_with_multi_gpu_trains_both_ranks_on_cpu(tmp_path):
    recipe = write_recipe(tmp_path, max_steps=2)
    process = accelerate_launch(["--multi_gpu", "--num_processes", "2"], recipe, log=tmp_path / "run.log")
    announced(finished(process, tmp_path / "run.log"), "2 processes (DDP)")
    trained_on_both_ranks(tmp_path / "out" / "checkpoint-2", 2)


@pytest.mark.slow  # 2 launches of 2 processes
def test_fsdp2_config_trains_sharded_through_the_cli_in_bf16_and_resumes(tmp_path):
    launcher = ["--config_file", "configs/accelerate/fsdp2.yaml", "--num_processes", "2"]
    recipe = write_recipe(tmp_path, max_steps=2, bf16=True, gradient_checkpointing=True)  # as the recipes train
    announced(
        finished(accelerate_launch(launcher, recipe, log=tmp_path / "a.log"), tmp_path / "a.log"),
        "2 processes (FSDP2)",
    )
    flags = ["--max_steps", "4", "--resume_from_checkpoint", "last"]
    stdout = finished(accelerate_launch(launcher, recipe, *flags, log=tmp_path / "b.log"), tmp_path / "b.log")
    announced(stdout, "2 processes (FSDP2)")
    state = trained_on_both_ranks(tmp_path / "out" / "checkpoint-4", 4)
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]


@pytest.mark.slow  # 1 launch
def test_accelerate_launch_that_would_train_one_process_of_two_is_refused_in_one_line(tmp_path):
    recipe = write_recipe(tmp_path, max_steps=2)
    process = accelerate_launch(["--num_processes", "2"], recipe, log=tmp_path / "run.log")
    assert process.wait(timeout=TIMEOUT) != 0
    lines = [line for line in (tmp_path / "run.err").read_text().splitlines() if line.startswith("fipo-trl train:")]
    assert lines == [
        "fipo-trl train: error: accelerate launch asked for several processes but started one (without a GPU, only "
        "--multi_gpu or a config file with an engine starts them all): add --multi_gpu (DDP) or --config_file, e.g. "
        "accelerate launch --multi_gpu --num_processes 2 -m fipo_trl train RECIPE"
    ]
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written


@pytest.mark.slow  # 1 launch of 2 processes
def test_a_deepspeed_launch_that_use_cpu_would_turn_into_ddp_is_refused(tmp_path):
    recipe = write_recipe(tmp_path, max_steps=2)
    launcher = ["--config_file", "configs/accelerate/zero3.yaml", "--num_processes", "2"]
    process = accelerate_launch(launcher, recipe, "--use_cpu", "true", log=tmp_path / "run.log")
    assert process.wait(timeout=TIMEOUT) != 0
    # both processes refuse and write to the same file: count the line, not the file's lines (their bytes may mix)
    err = (tmp_path / "run.err").read_text()
    refusal = (
        "fipo-trl train: error: the launch asks for DeepSpeed ZeRO-3 but accelerate set up without DeepSpeed: use_cpu "
        "turns it off; drop --use_cpu (without a GPU, bf16 under DeepSpeed is refused by transformers: train with "
        "--bf16 false)"
    )
    assert refusal in err  # torchrun adds its own report of the failed processes (ChildFailedError) after it
    assert not (tmp_path / "out").exists()  # refused before the model loaded


LAUNCHER_VARIABLES = ("WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_DEEPSPEED",
                      "ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
                      "ACCELERATE_DEEPSPEED_ZERO_STAGE")  # fmt: skip


@pytest.fixture
def launcher_env(monkeypatch):
    """Set a launcher's environment variables, none left from the test process's own."""
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return lambda **variables: [monkeypatch.setenv(name, value) for name, value in variables.items()]


@pytest.mark.parametrize(
    ("variables", "fields", "engine"),
    [
        ({}, {}, "DDP"),  # one plain process: nothing to change
        ({"WORLD_SIZE": "2"}, {"use_cpu": True}, "DDP"),  # torchrun or --multi_gpu without a GPU
        ({"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, {"use_cpu": True}, "FSDP2"),
        (
            {"WORLD_SIZE": "1", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
            {"ddp_backend": "gloo"},  # even 1 process: without a backend accelerate drops DeepSpeed
            "DeepSpeed ZeRO-3",
        ),
        (
            {
                "WORLD_SIZE": "2",
                "ACCELERATE_USE_DEEPSPEED": "true",
                "ACCELERATE_DEEPSPEED_CONFIG_FILE": "configs/accelerate/ds_zero3_offload.json",
            },  # fmt: skip
            {"ddp_backend": "gloo"},
            "DeepSpeed ZeRO-3",  # the stage of the DeepSpeed file
        ),
    ],
)
def test_launch_fields_follow_the_launcher_environment(launcher_env, monkeypatch, variables, fields, engine):
    monkeypatch.chdir(ROOT)
    launcher_env(**variables)
    assert launch.launch_fields() == fields and launch.requested_engine() == engine
    assert launch.launch_flags(["--use_cpu", "false"]) == [item for k, v in fields.items() if k != "use_cpu"
                                                           for item in (f"--{k}", str(v))]  # fmt: skip


def test_a_single_process_started_for_several_is_refused(launcher_env):
    launcher_env(ACCELERATE_MIXED_PRECISION="no", MASTER_ADDR="127.0.0.1")  # accelerate's simple launcher, N > 1
    with pytest.raises(UsageError, match="started one .* --multi_gpu"):
        launch.check_launch()
    launcher_env(WORLD_SIZE="2")  # the same variables from a multi-process launch
    launch.check_launch()
