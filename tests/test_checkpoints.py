"""Which checkpoint a run resumes from: the newest complete one, never a folder a kill left half-written; and exact
resume (`ExactResumeMixin`) on plain GRPOTrainer."""

import json
import logging
import shutil
from types import SimpleNamespace

import torch
from trl import GRPOTrainer

from fipo_trl import ExactResumeMixin
from fipo_trl.run.checkpoints import (
    MARKER_NAME,
    CheckpointMarkerCallback,
    checkpoint_folders,
    incomplete_reason,
    last_complete_checkpoint,
    write_marker,
)


def save(output_dir, step, marker=True, weights=b"\0" * 64, state=True):
    """A checkpoint folder laid out as transformers saves one (weights first, trainer_state.json last)."""
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    (folder / "optimizer.pt").write_bytes(b"\1" * 32)
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if marker:
        write_marker(folder)
    return folder


def test_folders_are_sorted_by_step_not_by_name(tmp_path):
    for step in (9, 10, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-5").write_text("a file, not a checkpoint")
    names = [folder.name for folder in checkpoint_folders(tmp_path)]
    assert names == ["checkpoint-100", "checkpoint-10", "checkpoint-9"]
    assert checkpoint_folders(tmp_path / "missing") == []


def test_complete_checkpoint_has_no_reason(tmp_path):
    assert incomplete_reason(save(tmp_path, 1)) is None
    assert incomplete_reason(save(tmp_path, 2, marker=False)) is None  # a plain-TRL checkpoint, judged by its files


def test_each_kind_of_half_written_checkpoint_is_named(tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    assert incomplete_reason(tmp_path / "checkpoint-1") == "no trainer_state.json"
    assert incomplete_reason(save(tmp_path, 2, marker=False, weights=None)).startswith("no model weights")
    truncated_state = save(tmp_path, 3, marker=False)
    (truncated_state / "trainer_state.json").write_text('{"global_st')
    assert "not valid JSON" in incomplete_reason(truncated_state)
    truncated_weights = save(tmp_path, 4)
    (truncated_weights / "model.safetensors").write_bytes(b"\0" * 10)
    assert incomplete_reason(truncated_weights) == "model.safetensors has 10 bytes, the save wrote 64"
    assert incomplete_reason(save(tmp_path, 5, marker=False), marker_required=True).startswith(f"no {MARKER_NAME}")


def test_resume_falls_back_to_the_newest_complete_checkpoint_with_a_warning(tmp_path, caplog):
    save(tmp_path, 100)
    save(tmp_path, 200)
    save(tmp_path, 300, marker=False)  # killed after trainer_state.json, before the save finished
    (tmp_path / "checkpoint-400").mkdir()  # killed right after the folder was made
    with caplog.at_level(logging.WARNING, logger="fipo_trl.run.checkpoints"):
        assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-200")
    assert "checkpoint-400: no trainer_state.json" in caplog.text
    assert "checkpoint-300: no checkpoint_complete.json" in caplog.text


def test_without_any_complete_checkpoint_there_is_none(tmp_path, caplog):
    (tmp_path / "checkpoint-1").mkdir()
    with caplog.at_level(logging.WARNING, logger="fipo_trl.run.checkpoints"):
        assert last_complete_checkpoint(tmp_path) is None
    assert "No complete checkpoint" in caplog.text
    assert last_complete_checkpoint(tmp_path / "empty") is None


def test_callback_marks_a_save_only_after_it_finished_and_clears_a_stale_marker(tmp_path):
    callback = CheckpointMarkerCallback()
    args = SimpleNamespace(output_dir=str(tmp_path), should_save=True)
    state = SimpleNamespace(global_step=3)
    folder = save(tmp_path, 3)  # a checkpoint-3 from an earlier run, which this run is about to overwrite
    callback.on_step_end(args, state, SimpleNamespace(should_save=True))
    assert not (folder / MARKER_NAME).exists()  # a kill during the rewrite now leaves an unmarked folder
    callback.on_step_end(args, SimpleNamespace(global_step=3), SimpleNamespace(should_save=False))
    (folder / "model.safetensors").write_bytes(b"\0" * 80)
    callback.on_save(args, state, SimpleNamespace())
    assert json.loads((folder / MARKER_NAME).read_text())["files"]["model.safetensors"] == 80
    assert incomplete_reason(folder, marker_required=True) is None


class ResumableGRPO(ExactResumeMixin, GRPOTrainer):
    """Exact resume on plain GRPOTrainer: no FIPO, no dynamic sampling."""


def test_exact_resume_composes_with_grpo_trainer(make_trainer, tmp_path):
    # checkpoint-3 falls inside the generation batch of steps 1-4: the resumed run finishes that batch from the
    # checkpoint, as the uninterrupted one did (TRL alone regenerates at step 4, and step 4's loss differs)
    overrides = {"steps_per_generation": 4, "max_steps": 8, "save_strategy": "steps", "save_steps": 3}
    full = make_trainer(tmp_path / "full", trainer_cls=ResumableGRPO, **overrides)
    full.train()
    state = torch.load(tmp_path / "full" / "checkpoint-3" / "fipo_generation_state_0.pt", weights_only=True)
    assert state["prompt_stream"] is None and state["step"] == 3 and len(state["buffered_inputs"]) == 4
    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = make_trainer(tmp_path / "resumed", trainer_cls=ResumableGRPO, **overrides)
    resumed.train(resume_from_checkpoint=True)
    after = [
        [(h["step"], h["loss"]) for h in run.state.log_history if "loss" in h and h["step"] > 3]
        for run in (full, resumed)
    ]
    assert after[0] == after[1] and len(after[0]) == 5
