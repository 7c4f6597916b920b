"""
What `--resume_from_checkpoint` means for a run: a checkpoint folder to resume from, or a fresh start, with what would
go wrong refused before the model loads, and a finished run left as it is (docs/cluster-jobs.md).

A run is finished when its newest complete checkpoint has reached the run's `max_steps` (transformers saves a
checkpoint at the last step whenever `save_strategy` is "steps"), or, for a run that saved no checkpoint, when
[`write_completion_marker`] recorded its end in `output_dir/fipo_run_complete.json`. The checkpoint's step comes
first because it is what a resume would continue from: a run killed after its last checkpoint but before its final
model has nothing left to train either.
"""

import json
import logging
import os
from pathlib import Path

from ..errors import UsageError


logger = logging.getLogger(__name__)

COMPLETION_MARKER = "fipo_run_complete.json"


class RunAlreadyComplete(Exception):
    """The run of `output_dir` has already trained to its `max_steps`: nothing to do; the message says where it is."""


def resolve_resume(training_args, overwrite_output_dir=False, model_dir=None) -> str | None:
    """
    The checkpoint folder that `training_args.resume_from_checkpoint` means, or `None` (a fresh run), refusing what
    would go wrong; `training_args` is left as it is.

    - `last` (or `true`): `output_dir`'s newest complete `checkpoint-*` (newer, incomplete ones are skipped with a
      warning); refused when there is none.
    - `auto`: the same when there is one, else a fresh run: one command for a job's first start and its requeues.
    - a folder: it must be a complete checkpoint with readable weights.
    - `None` (a fresh run): refused when `output_dir` holds an earlier run (`checkpoint-*` folders, whose checkpoints
      the run would overwrite one by one, or a finished run's final model), unless `overwrite_output_dir` is set:
      they are then deleted.

    `overwrite_output_dir` with a resume is refused (one asks to continue the earlier run, the other to delete it). A
    checkpoint that has reached `max_steps` raises [`RunAlreadyComplete`]; one past it is refused (the run would
    train one more step than it was asked for). A checkpoint whose `config.json` describes another architecture than
    `model_dir`'s is refused before the model loads (the state dict would not fit).
    """
    from .checkpoints import architecture_mismatch, last_complete_checkpoint
    from .weight_files import check_weight_files

    resume = training_args.resume_from_checkpoint
    out = training_args.output_dir
    if resume is not None and overwrite_output_dir:
        raise UsageError(
            f"resume_from_checkpoint={resume} with overwrite_output_dir=true: one continues the earlier run, the "
            "other deletes it; drop --overwrite_output_dir to continue, or --resume_from_checkpoint to start over"
        )
    if resume == "auto":
        resume = last_complete_checkpoint(out)
        logger.info("resume_from_checkpoint=auto: %s", f"resuming from {resume}" if resume else "a fresh run")
        if resume is None:
            check_finished_without_checkpoint(out, training_args)
            return None
    if resume is None:
        clear_earlier_run(out, overwrite_output_dir, training_args.process_index == 0)
        return None
    resume = checkpoint_to_resume(resume, out)
    if model_dir is not None:
        mismatch = architecture_mismatch(resume, model_dir)
        if mismatch is not None:
            raise UsageError(
                f"resume_from_checkpoint: {resume} holds another model than model_name_or_path={model_dir} "
                f"({mismatch}): resume with the model it was trained from, or start a fresh run in another output_dir"
            )
    check_weight_files(resume)
    check_steps_left(resume, training_args)  # after the checks of the folder itself: a damaged one is named first
    return resume


def target_steps(state: dict, training_args) -> int | None:
    """
    The optimizer steps the run is asked for: `max_steps`, or with `max_steps: -1` the count the checkpoint's run
    derived from the same `num_train_epochs` (`None` when the epochs changed: only the trainer can count them).
    """
    if training_args.max_steps > 0:
        return training_args.max_steps
    if state.get("num_train_epochs") == training_args.num_train_epochs and state.get("max_steps"):
        return state["max_steps"]
    return None


def check_steps_left(checkpoint, training_args) -> None:
    """Raise [`RunAlreadyComplete`] when `checkpoint` has reached the run's steps, [`UsageError`] when it is past."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    step, target = state["global_step"], target_steps(state, training_args)
    if target is None or step < target:
        return
    if step > target:
        raise UsageError(
            f"max_steps: {target} is below the {step} steps {checkpoint} has already trained: resuming cannot "
            f"untrain them; set max_steps to {step} or more, or use {checkpoint} as model_name_or_path of a new run"
        )
    out = Path(training_args.output_dir)
    if (out / COMPLETION_MARKER).is_file():
        final = f"final model in {out}"
    else:  # killed between its last checkpoint and its final model
        final = f"its final model was not saved: the trained weights are {checkpoint}"
    raise RunAlreadyComplete(
        f"the run in {out} is already complete: step {step} of max_steps {target} ({final}); nothing was written "
        f"(raise max_steps to train further)"
    )


def check_finished_without_checkpoint(out, training_args) -> None:
    """`auto` in an `output_dir` without checkpoints: a run that saved none but finished is complete, or refused."""
    marker = Path(out) / COMPLETION_MARKER
    if not marker.is_file():
        return
    state = json.loads(marker.read_text(encoding="utf-8"))
    target = target_steps(state, training_args)
    if target is not None and state["global_step"] >= target:
        raise RunAlreadyComplete(
            f"the run in {out} is already complete: step {state['global_step']} of max_steps {target} (final model in "
            f"{out}); nothing was written"
        )
    raise UsageError(
        f"output_dir {out} holds a finished run of {state['global_step']} steps and no checkpoint to continue it "
        "from: start over with --overwrite_output_dir true (replaces its final model), or choose another output_dir"
    )


def write_completion_marker(training_args, state) -> None:
    """Record in `output_dir/fipo_run_complete.json` that the run ended and saved its final model (main process)."""
    marker = Path(training_args.output_dir) / COMPLETION_MARKER
    record = {"global_step": state.global_step, "max_steps": state.max_steps}
    record["num_train_epochs"] = state.num_train_epochs
    tmp = marker.with_name(f".{COMPLETION_MARKER}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, marker)  # a reader sees no marker or the whole one


def clear_earlier_run(out, overwrite_output_dir, main_process):
    """
    Before a fresh run: refuse an `output_dir` with an earlier run's `checkpoint-*` folders or finished run, or with
    `overwrite_output_dir` delete them (on the main process).
    """
    import shutil

    from .checkpoints import checkpoint_folders

    folders = checkpoint_folders(out)
    marker = Path(out) / COMPLETION_MARKER
    if not folders and not marker.is_file():
        return
    names = ", ".join(folder.name for folder in folders[:3]) + (", ..." if len(folders) > 3 else "")
    names = names or "its final model"
    if not overwrite_output_dir:
        raise UsageError(
            f"output_dir {out} already holds checkpoints of an earlier run ({names}): continue it with "
            "--resume_from_checkpoint auto, or start over with --overwrite_output_dir true (deletes them)"
        )
    if main_process:
        logger.warning("overwrite_output_dir: deleting the earlier run's checkpoints in %s: %s", out, names)
        for folder in folders:
            shutil.rmtree(folder)
        marker.unlink(missing_ok=True)


def checkpoint_to_resume(resume, out):
    """The complete checkpoint folder of `resume` (`last`, `true` or a folder), or [`UsageError`] saying why not."""
    from .checkpoints import incomplete_reason, last_complete_checkpoint

    if resume in ("last", "true", "True"):
        last = last_complete_checkpoint(out)
        if last is None:
            raise UsageError(
                f"resume_from_checkpoint={resume}: no checkpoint to resume from in {out} (--resume_from_checkpoint "
                "auto starts a fresh run when there is none)"
            )
        return last
    if not os.path.isdir(resume):
        raise UsageError(
            f"resume_from_checkpoint={resume!r} is not a folder (use 'last' for output_dir's latest, 'auto' for the "
            "latest or a fresh start)"
        )
    reason = incomplete_reason(resume)
    if reason is not None:
        last = last_complete_checkpoint(out)
        hint = f"; the newest complete one is {last}" if last else ""
        raise UsageError(f"resume_from_checkpoint={resume!r} is incomplete ({reason}){hint}")
    return resume
