"""
A run through the life of a cluster job (docs/cluster-jobs.md): SIGTERM from a scheduler in 1 and 2 processes, the
same command again after a requeue (`--resume_from_checkpoint auto`), one run per output folder (the lock), and what
a resume does with changed settings.

Signals are real, sent to real `fipo-trl train` subprocesses; "Slurm-style" means SIGTERM to every process of the
launch at once (its process group), as Slurm signals every process of a job step.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST_RUN, free_port
from safetensors.torch import load_file

from fipo_trl.cli import main as fipo_trl
from fipo_trl.errors import UsageError
from fipo_trl.run import lock as lock_module
from fipo_trl.run.checkpoints import incomplete_reason
from fipo_trl.run.lock import LOCK_NAME, OutputDirLock
from fipo_trl.run.preemption import PreemptionCallback


ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "quickstart.yaml"
# conftest's fast run (per process) with a checkpoint every 2 steps, no held-out check, no token view
FAST = {
    **FAST_RUN,
    "heldout_size": 0,
    "save_steps": 2,
    "save_total_limit": None,
    "report_to": ["none"],
    "token_view": False,
}
pytestmark = pytest.mark.usefixtures("one_thread")
TIMEOUT = 300  # seconds for a launch on 2 busy cores


def write_recipe(folder, out, **changes):
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(FAST, output_dir=str(out), **changes)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def start(recipe, *flags, processes=1, log):
    """`fipo-trl train RECIPE FLAGS` in 1 process, or 2 under torchrun (gloo on CPU), in a process group of its own."""
    env = {
        **os.environ,
        # tests/ for the recipes that name a reward of tests/fault_rewards.py
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONWARNINGS": "ignore",
    }
    command = [sys.executable, "-m", "fipo_trl", "train", str(recipe), *flags]
    if processes == 2:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        command = [*launcher, "-m", "fipo_trl", "train", str(recipe), "--use_cpu", "true", *flags]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=log.with_suffix(".err").open("w"), env=env,
                            start_new_session=True, preexec_fn=default_signals)  # fmt: skip


def default_signals():
    """In a child about to start: default SIGINT and SIGTERM, whatever the runner's (`cmd &` ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def worker_pid(launcher, rank):
    """The pid of the torchrun worker of `rank` under `launcher`, read from /proc (its `RANK` variable)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        for child in children:
            with contextlib.suppress(OSError):
                if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
                    return int(child)
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank}")


def wait_for(path, process):
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path} after {TIMEOUT} s"
        time.sleep(0.2)


def slurm_kill(process):
    """SIGTERM to every process of the launch (launcher and workers), as Slurm preempts a job step; wait for it."""
    os.killpg(process.pid, signal.SIGTERM)
    return process.wait(timeout=TIMEOUT)


def train_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("fipo-trl train:")]


def worker_tracebacks(stderr):
    """Tracebacks other than torchrun's own: its agent re-raises the job's SIGTERM as a `SignalException`."""
    blocks = stderr.split("Traceback (most recent call last):")[1:]
    return [block for block in blocks if "SignalException: Process" not in block]


# ---- preemption -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(tmp_path, processes):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, out, max_steps=500)
    process = start(recipe, processes=processes, log=tmp_path / "run.log")
    wait_for(out / "checkpoint-2" / "checkpoint_complete.json", process)
    status = slurm_kill(process)
    stderr = (tmp_path / "run.err").read_text()
    # one process exits 143 (128 + SIGTERM); torchrun itself reports 1 for the signal it was sent
    assert status == (143 if processes == 1 else 1), stderr[-3000:]
    assert not worker_tracebacks(stderr) and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    lines = train_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]  # the main process speaks for the run
    match = re.fullmatch(
        r"fipo-trl train: stopped by SIGTERM after step (\d+) \(saved in \d+\.\d s; grace period 20 s\); "
        r"last checkpoint: (.*checkpoint-(\d+)); resume with: fipo-trl train .*recipe\.yaml( --use_cpu true)? "
        r"--resume_from_checkpoint last",
        lines[0],
    )
    assert match and match.group(1) == match.group(3), lines[0]
    # the step the signal fell in was finished and saved, complete (every rank's files listed in the marker)
    assert int(match.group(1)) > 2 and incomplete_reason(match.group(2), marker_required=True) is None
    assert not (out / LOCK_NAME).exists() and not (out / "model.safetensors").exists()  # no final model


@pytest.mark.slow
def test_sigterm_to_one_process_of_two_stops_both_as_a_preemption(tmp_path):
    # rank 0 was not signalled and concluded that the run had finished: "FIPO run finished: 3 optimizer steps", a
    # final model, then torchrun's traceback
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, out, max_steps=500)
    process = start(recipe, processes=2, log=tmp_path / "run.log")
    wait_for(out / "checkpoint-2" / "checkpoint_complete.json", process)
    os.kill(worker_pid(process, rank=1), signal.SIGTERM)
    process.wait(timeout=TIMEOUT)
    stderr, stdout = (tmp_path / "run.err").read_text(), (tmp_path / "run.log").read_text()
    assert "FIPO run finished" not in stdout and not (out / "model.safetensors").exists(), stdout[-3000:]
    lines = train_lines(stderr)
    assert len(lines) == 1 and re.fullmatch(
        r"fipo-trl train: stopped by SIGTERM after step (\d+) \(saved in \d+\.\d s; grace period 20 s\); last "
        r"checkpoint: .*checkpoint-\1; resume with: .*--resume_from_checkpoint last",
        lines[0],
    ), stderr[-3000:]
    # torchrun's report: the signalled worker exited 143 (128 + SIGTERM); torchrun then ends the other, which has
    # said where the run stopped, with a SIGTERM of its own
    root_cause = stderr[stderr.index("Root Cause (first observed failure)") :]
    assert re.search(r"^\s*exitcode\s*: 143 ", root_cause, re.MULTILINE), stderr[-3000:]
    # torchrun's own ChildFailedError traceback reports a failed worker: none other
    assert not [block for block in worker_tracebacks(stderr) if "ChildFailedError" not in block], stderr[-3000:]


@pytest.mark.slow
def test_grace_period_0_stops_at_once(tmp_path):
    # 0 left the alarm unarmed (setitimer(0) disarms it): the step ran on, a slow reward call for 45 s
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, out, max_steps=500)
    process = start(recipe, "--preemption_grace_period", "0", log=tmp_path / "run.log")
    wait_for(out / "checkpoint-2" / "checkpoint_complete.json", process)
    assert slurm_kill(process) == 143
    stderr = (tmp_path / "run.err").read_text()
    lines = train_lines(stderr)
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    assert re.fullmatch(
        r"fipo-trl train: stopped by SIGTERM at step \d+ \(preemption_grace_period is 0: stopped at once\); last "
        r"checkpoint: .*checkpoint-\d+; resume with: .*--resume_from_checkpoint last",
        lines[0],
    ), lines


@pytest.mark.slow
def test_sigterm_before_training_says_so_and_releases_the_lock(tmp_path):
    # SIGTERM while the model loads: exit 143 without a line, and the lock file left behind
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, out, max_steps=500)
    process = start(recipe, log=tmp_path / "run.log")
    wait_for(out / LOCK_NAME, process)  # taken before the data, rewards and model load
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=TIMEOUT) == 143
    lines = train_lines((tmp_path / "run.err").read_text())
    # a slow machine may reach training first: the run then stops at a step's end, in one line too
    assert len(lines) == 1 and lines[0].startswith("fipo-trl train: stopped by SIGTERM "), lines
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_step_that_outlasts_the_grace_period_is_abandoned(tmp_path):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, out, max_steps=500)
    process = start(recipe, "--preemption_grace_period", "0.001", log=tmp_path / "run.log")
    wait_for(out / "checkpoint-2" / "checkpoint_complete.json", process)
    assert slurm_kill(process) == 143
    stderr = (tmp_path / "run.err").read_text()
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = train_lines(stderr)
    assert len(lines) == 1 and re.fullmatch(
        r"fipo-trl train: stopped by SIGTERM at step \d+ \(the step did not end within the grace period of 0\.001 "
        r"s\); last checkpoint: .*checkpoint-\d+; resume with: .*--resume_from_checkpoint last",
        lines[0],
    ), stderr[-3000:]


def test_a_save_is_made_on_sigterm_only_when_it_fits_in_what_is_left_of_the_grace_period():
    preemption = PreemptionCallback(accelerator=None, grace_period=10)
    preemption.signalled_at = time.monotonic()
    assert preemption._save_decision() == (True, None)  # no save timed yet: try
    preemption.save_seconds = 3
    assert preemption._save_decision() == (True, None)
    preemption.save_seconds = 30
    save, why = preemption._save_decision()
    assert not save and re.fullmatch(r"a save takes 30 s, (9|10) s of the grace period were left", why)


@pytest.mark.slow
def test_sigterm_then_the_same_command_again_ends_as_an_uninterrupted_run(tmp_path):
    # a Slurm requeue of a 2-process run: SIGTERM to every process, then the very same command line
    flags = ["--resume_from_checkpoint", "auto"]
    whole = write_recipe(tmp_path, tmp_path / "whole", max_steps=8)
    assert start(whole, *flags, processes=2, log=tmp_path / "whole.log").wait(timeout=TIMEOUT) == 0
    (tmp_path / "requeued").mkdir()
    out = tmp_path / "requeued" / "out"
    recipe = write_recipe(tmp_path / "requeued", out, max_steps=8)
    process = start(recipe, *flags, processes=2, log=tmp_path / "first.log")
    wait_for(out / "checkpoint-2" / "checkpoint_complete.json", process)
    slurm_kill(process)
    stopped = train_lines((tmp_path / "first.err").read_text())
    assert len(stopped) == 1 and "stopped by SIGTERM after step" in stopped[0], stopped
    assert not (out / "model.safetensors").exists()  # stopped before the end
    again = start(recipe, *flags, processes=2, log=tmp_path / "again.log")
    assert again.wait(timeout=TIMEOUT) == 0, (tmp_path / "again.err").read_text()[-3000:]
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    expected = load_file(tmp_path / "whole" / "model.safetensors")
    resumed = load_file(out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


# ---- requeue: auto and the overwrite refusal ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """output_dir of a finished 2-step run (checkpoint-1 and checkpoint-2), started with `auto` on an empty folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("two-steps")
    recipe = write_recipe(folder, folder / "out", max_steps=2, save_steps=1)
    try:
        assert fipo_trl(["train", str(recipe), "--resume_from_checkpoint", "auto"]) == 0
    finally:
        torch.set_num_threads(threads)
    return recipe, folder / "out"


def copy_run(two_step_run, tmp_path):
    import shutil

    recipe, out = two_step_run
    shutil.copytree(out, tmp_path / "out")
    return recipe, tmp_path / "out"


def steps_logged(checkpoint):
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [(entry["step"], entry["learning_rate"]) for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_auto_resumes_a_folder_with_checkpoints(two_step_run, tmp_path, capsys):
    recipe, out = copy_run(two_step_run, tmp_path)
    argv = ["train", str(recipe), "--output_dir", str(out), "--max_steps", "3", "--resume_from_checkpoint", "auto"]
    assert fipo_trl(argv) == 0, capsys.readouterr().err
    assert [step for step, _ in steps_logged(out / "checkpoint-3")] == [1, 2, 3]  # steps 1-2 from checkpoint-2


@pytest.mark.slow
def test_overwrite_output_dir_starts_over_without_the_earlier_checkpoints(two_step_run, tmp_path, capsys):
    recipe, out = copy_run(two_step_run, tmp_path)
    argv = ["train", str(recipe), "--output_dir", str(out), "--max_steps", "1", "--overwrite_output_dir", "true"]
    assert fipo_trl(argv) == 0, capsys.readouterr().err
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert steps_logged(out / "checkpoint-1") == [(1, 5e-05)]


def snapshot(path):
    return {str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*")) if file.is_file()}


def train_again(capsys, recipe, out, *flags):
    status = fipo_trl(["train", str(recipe), "--output_dir", str(out), *flags])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return status, captured


@pytest.mark.slow
@pytest.mark.parametrize("resume", ["auto", "last"])
def test_a_finished_run_stays_finished(two_step_run, tmp_path, capsys, resume):
    # a requeue after the end trained an 11th step of max_steps 10 and replaced the final model
    recipe, out = copy_run(two_step_run, tmp_path)
    before = snapshot(out)
    status, captured = train_again(capsys, recipe, out, "--max_steps", "2", "--resume_from_checkpoint", resume)
    assert status == 0, captured.err
    assert captured.out.strip().splitlines()[-1] == (
        f"fipo-trl train: the run in {out} is already complete: step 2 of max_steps 2 (final model in {out}); nothing "
        "was written (raise max_steps to train further)"
    )
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_run_killed_before_its_final_model_is_complete_at_its_last_checkpoint(two_step_run, tmp_path, capsys):
    recipe, out = copy_run(two_step_run, tmp_path)
    for name in ("model.safetensors", "fipo_run_complete.json"):
        (out / name).unlink()
    before = snapshot(out)
    status, captured = train_again(capsys, recipe, out, "--max_steps", "2", "--resume_from_checkpoint", "auto")
    assert status == 0, captured.err
    assert (
        captured.out.strip()
        .splitlines()[-1]
        .endswith(
            f"step 2 of max_steps 2 (its final model was not saved: the trained weights are {out / 'checkpoint-2'}); "
            "nothing was written (raise max_steps to train further)"
        )
    )
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_resume_below_the_checkpoint_step_is_refused(two_step_run, tmp_path, capsys):
    recipe, out = copy_run(two_step_run, tmp_path)
    before = snapshot(out)
    status, captured = train_again(capsys, recipe, out, "--max_steps", "1", "--resume_from_checkpoint", "auto")
    assert status == 2 and train_lines(captured.err) == [
        f"fipo-trl train: error: max_steps: 1 is below the 2 steps {out / 'checkpoint-2'} has already trained: "
        f"resuming cannot untrain them; set max_steps to 2 or more, or use {out / 'checkpoint-2'} as "
        "model_name_or_path of a new run"
    ]
    assert snapshot(out) == before


# ---- resume with changed settings ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_with_another_learning_rate_says_in_one_line_that_the_checkpoint_rate_is_kept(
    two_step_run, tmp_path, capsys, caplog
):
    recipe, out = copy_run(two_step_run, tmp_path)
    argv = ["train", str(recipe), "--output_dir", str(out), "--max_steps", "3", "--resume_from_checkpoint", "last"]
    assert fipo_trl([*argv, "--learning_rate", "1e-4"]) == 0, capsys.readouterr().err
    kept = [record.getMessage() for record in caplog.records if "is kept" in record.getMessage()]
    assert kept == [
        f"learning_rate: the checkpoint's 5e-05 is kept, not 0.0001 (a resumed run restores the optimizer and "
        f"scheduler state of {out / 'checkpoint-2'}); to train with 0.0001, start a fresh run from its weights "
        f"(--model_name_or_path {out / 'checkpoint-2'} with another output_dir)"
    ]
    assert steps_logged(out / "checkpoint-3")[-1] == (3, 5e-05)  # what the line says is what happened


@pytest.mark.slow
def test_resume_with_unchanged_settings_says_nothing_about_them(two_step_run, tmp_path, capsys, caplog):
    recipe, out = copy_run(two_step_run, tmp_path)
    argv = ["train", str(recipe), "--output_dir", str(out), "--max_steps", "3", "--resume_from_checkpoint", "last"]
    assert fipo_trl(argv) == 0, capsys.readouterr().err
    assert not [record for record in caplog.records if "is kept" in record.getMessage()]


# ---- one run per output folder ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, out, max_steps=500)
    first = start(recipe, log=tmp_path / "first.log")
    try:
        wait_for(out / LOCK_NAME, first)
        second = start(recipe, "--resume_from_checkpoint", "auto", log=tmp_path / "second.log")
        assert second.wait(timeout=TIMEOUT) == 2
        lines = train_lines((tmp_path / "second.err").read_text())
        assert len(lines) == 1 and re.fullmatch(
            rf"fipo-trl train: error: output_dir {out} is in use by another run \(host {socket.gethostname()}, pid "
            rf"{first.pid}, started .*; heartbeat \d+ s ago\): wait for it to end or choose another output_dir; if "
            rf"that run is dead, delete {out / LOCK_NAME}",
            lines[0],
        ), lines
        assert first.poll() is None  # the first run goes on
    finally:
        slurm_kill(first)


@pytest.mark.slow
def test_every_process_of_a_two_process_run_refuses_a_folder_in_use(tmp_path):
    # rank 1 cannot judge the lock: it follows rank 0, so that no rank waits for the other one for ever
    out = tmp_path / "out"
    out.mkdir()
    holder = {"host": "node-elsewhere", "pid": 1, "slurm_job_id": "7", "started": "2026-01-01T00:00:00+00:00"}
    (out / LOCK_NAME).write_text(json.dumps(holder))
    recipe = write_recipe(tmp_path, out, max_steps=2)
    process = start(recipe, processes=2, log=tmp_path / "run.log")
    assert process.wait(timeout=TIMEOUT) != 0
    lines = train_lines((tmp_path / "run.err").read_text())
    # each process refuses; torchrun may end the second before it prints, once the first has failed
    refusal = "is in use by another run (host node-elsewhere, pid 1"
    assert 1 <= len(lines) <= 2 and all(refusal in line for line in lines)
    assert json.loads((out / LOCK_NAME).read_text()) == holder


def write_lock(out, **holder):
    holder = {"host": socket.gethostname(), "pid": 1, "slurm_job_id": None, "started": "2026-01-01T00:00:00", **holder}
    (out / LOCK_NAME).write_text(json.dumps(holder))
    return out / LOCK_NAME


def held_by_me(out):
    return json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_of_a_process_gone_from_this_host_is_taken_over(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(tmp_path, pid=int(gone.stdout))
    with OutputDirLock(tmp_path):
        assert held_by_me(tmp_path)
    assert f"process {int(gone.stdout)} on this host is gone" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end


def test_lock_on_another_host_holds_until_its_heartbeat_is_old(tmp_path):
    lock = write_lock(tmp_path, host="node-elsewhere", pid=os.getpid())
    with pytest.raises(UsageError, match="is in use by another run \\(host node-elsewhere"):
        OutputDirLock(tmp_path).__enter__()
    stale = time.time() - lock_module.STALE_SECONDS - 1
    os.utime(lock, (stale, stale))
    with OutputDirLock(tmp_path):
        assert held_by_me(tmp_path)


def test_lock_of_an_earlier_attempt_of_the_same_slurm_job_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    write_lock(tmp_path, host="node-elsewhere", slurm_job_id="43")
    with pytest.raises(UsageError, match="Slurm job 43"):
        OutputDirLock(tmp_path).__enter__()
    write_lock(tmp_path, host="node-elsewhere", slurm_job_id="42")  # requeued: the earlier attempt was ended
    with OutputDirLock(tmp_path):
        assert held_by_me(tmp_path)


def test_a_half_written_lock_is_taken_over_as_what_it_is(tmp_path, caplog):
    # it was taken over as "host None, pid None ... no heartbeat for inf s"
    lock = tmp_path / LOCK_NAME
    lock.write_text('{"host": "node')  # its writer was killed mid-write
    old = time.time() - lock_module.WRITE_SECONDS - 1
    os.utime(lock, (old, old))
    with OutputDirLock(tmp_path):
        assert held_by_me(tmp_path)
    assert re.fullmatch(
        rf"Taking over the lock file {lock}: it is not a lock \(empty or half-written, its writer was killed while "
        r"writing it \d+ s ago\)",
        caplog.messages[0],
    ), caplog.messages


def test_a_lock_being_written_is_read_once_written(tmp_path):
    # an empty lock file just created is another run between its create and its write: read again, not taken over
    import threading

    lock = tmp_path / LOCK_NAME
    lock.write_text("")
    writer = threading.Timer(0.2, write_lock, args=(tmp_path,))  # pid 1 of this host: alive
    writer.start()
    with pytest.raises(UsageError, match=r"is in use by another run \(host .*, pid 1,"):
        OutputDirLock(tmp_path).__enter__()
    writer.join()


def test_only_the_main_process_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with OutputDirLock(tmp_path):
        assert not (tmp_path / LOCK_NAME).exists()


def test_the_holder_keeps_its_heartbeat_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT_SECONDS", 0.05)
    with OutputDirLock(tmp_path):
        os.utime(tmp_path / LOCK_NAME, (0, 0))
        time.sleep(0.5)
        assert time.time() - (tmp_path / LOCK_NAME).stat().st_mtime < 5


# ---- the Slurm script ---------------------------------------------------------------------------------------------


SLURM_STUBS = {
    "scontrol": """if [[ $1 == requeue ]]; then echo "scontrol $*" >> "$STUB_LOG"; else printf "node%d\\n" 0 1; fi""",
    # runs the step's tasks in the background and passes a SIGTERM on to them, as srun does
    "srun": """ntasks=1
while [[ $1 == --* ]]; do case $1 in --ntasks) ntasks=$2; shift 2;; --export) export "${2#ALL,}"; shift 2;;
  --ntasks-per-node|--nodes|--nodelist) shift 2;; *) shift;; esac; done
for ((i = 0; i < ntasks; i++)); do SLURM_PROCID=$i "$@" & done
trap 'kill -TERM $(jobs -p)' TERM
wait; wait""",
    "vllm": "exec sleep 600",
    # a training process that stops cleanly on SIGTERM, with the exit status of fipo-trl train
    "accelerate": """echo "accelerate $*" >> "$STUB_LOG"
trap 'kill $!; echo "training stopped by SIGTERM" >> "$STUB_LOG"; exit 143' TERM
sleep 600 & wait""",
    "curl": "exit 0",
}


@pytest.mark.slow  # the script runs `fipo-trl check` for real: ~11 s on 2 busy cores
def test_slurm_script_resumes_with_auto_and_requeues_itself_before_the_time_limit(tmp_path):
    for name, body in SLURM_STUBS.items():
        (tmp_path / name).write_text(f"#!/bin/bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{tmp_path}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.update({"SLURM_JOB_NODELIST": "node[0-1]", "SLURM_JOB_ID": "77", "STUB_LOG": str(log)})
    script = ["bash", "scripts/slurm/fipo_multinode.sbatch", "configs/recipes/fipo_qwen2.5_32b.yaml"]
    shell = subprocess.Popen(script, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (log.exists() and "accelerate launch" in log.read_text()):
        assert shell.poll() is None and time.monotonic() < deadline, shell.communicate()
        time.sleep(0.2)
    shell.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@300` sends before the time limit
    _, stderr = shell.communicate(timeout=60)
    calls = log.read_text().splitlines()
    launch = next(line for line in calls if line.startswith("accelerate launch"))
    assert "configs/recipes/fipo_qwen2.5_32b.yaml --resume_from_checkpoint auto --vllm_server_host node0" in launch
    assert calls[-2:] == ["training stopped by SIGTERM", "scontrol requeue 77"], calls
    assert shell.returncode == 0 and "stopping the run (SIGTERM) and requeueing job 77" in stderr
    script_text = (ROOT / "scripts" / "slurm" / "fipo_multinode.sbatch").read_text()
    assert "#SBATCH --requeue" in script_text and "#SBATCH --open-mode=append" in script_text


# ---- the launch a recipe is written for --------------------------------------------------------------------------


def test_check_reports_the_launch_the_recipe_is_written_for(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipe names its accelerate config from the repository root, as the sbatch script
    # a bare `fipo-trl check RECIPE` reported 1 process and warnings that do not apply at 128
    assert fipo_trl(["check", "configs/recipes/fipo_qwen2.5_32b.yaml"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2:4] == [
        "  from the recipe's launch field: --config_file configs/accelerate/zero3.yaml --num_processes 128 "
        "--num_machines 16 (flags override it)",
        "  128 training process(es) on 16 node(s) (8 per node), DeepSpeed ZeRO-3",
    ]
    assert fipo_trl(["check", "configs/recipes/fipo_qwen2.5_32b.yaml", "--num_processes", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "from the recipe's launch field: --config_file configs/accelerate/zero3.yaml (flags override it)" in out[2]
    assert out[3].startswith("  8 training process(es) on 1 node(s)")


@pytest.mark.slow
def test_the_model_card_loads_the_trained_model_with_a_training_prompt(two_step_run):
    # it said pipeline(..., model="None") and asked a chat question of a model trained on "37+48=?" prompts
    _, out = two_step_run
    card = (out / "README.md").read_text()
    assert 'model="None"' not in card and f'model="{out}"' in card
    assert re.search(r'^prompt = "\d+\+\d+=\?\\n"$', card, re.MULTILINE), card
