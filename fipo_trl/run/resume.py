"""
What `--resume_from_checkpoint` means for a run: a checkpoint folder to resume from, or a fresh start, with what would
go wrong refused before the model loads (docs/cluster-jobs.md).
"""

import logging
import os

from ..errors import UsageError


logger = logging.getLogger(__name__)


def resolve_resume(training_args, overwrite_output_dir=False, model_dir=None) -> str | None:
    """
    The checkpoint folder that `training_args.resume_from_checkpoint` means, or `None` (a fresh run), refusing what
    would go wrong; `training_args` is left as it is.

    - `last` (or `true`): `output_dir`'s newest complete `checkpoint-*` (newer, incomplete ones are skipped with a
      warning); refused when there is none.
    - `auto`: the same when there is one, else a fresh run: one command for a job's first start and its requeues.
    - a folder: it must be a complete checkpoint with readable weights.
    - `None` (a fresh run): refused when `output_dir` holds `checkpoint-*` folders of an earlier run, whose
      checkpoints the run would overwrite one by one, unless `overwrite_output_dir` is set: they are then deleted.

    A checkpoint whose `config.json` describes another architecture than `model_dir`'s is refused before the model
    loads (the state dict would not fit).
    """
    from .checkpoints import architecture_mismatch, last_complete_checkpoint
    from .weight_files import check_weight_files

    resume = training_args.resume_from_checkpoint
    out = training_args.output_dir
    if resume == "auto":
        resume = last_complete_checkpoint(out)
        logger.info("resume_from_checkpoint=auto: %s", f"resuming from {resume}" if resume else "a fresh run")
        if resume is None:
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
    return resume


def clear_earlier_run(out, overwrite_output_dir, main_process):
    """
    Before a fresh run: refuse an `output_dir` with an earlier run's `checkpoint-*` folders, or with
    `overwrite_output_dir` delete them (on the main process).
    """
    import shutil

    from .checkpoints import checkpoint_folders

    folders = checkpoint_folders(out)
    if not folders:
        return
    names = ", ".join(folder.name for folder in folders[:3]) + (", ..." if len(folders) > 3 else "")
    if not overwrite_output_dir:
        raise UsageError(
            f"output_dir {out} already holds checkpoints of an earlier run ({names}): continue it with "
            "--resume_from_checkpoint auto, or start over with --overwrite_output_dir true (deletes them)"
        )
    if main_process:
        logger.warning("overwrite_output_dir: deleting the earlier run's checkpoints in %s: %s", out, names)
        for folder in folders:
            shutil.rmtree(folder)


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
