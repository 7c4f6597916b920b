"""How a run stopped during `trainer.train()`: a failure, Ctrl-C or SIGTERM, where it stopped and what it saved."""

import contextlib
import errno
import shutil
import signal
from pathlib import Path

from ..errors import Preempted, TrainingError


def close_progress_bar(trainer):
    """End the training progress bar's line, so that the line saying why the run stopped starts a line of its own."""
    from transformers.trainer_callback import ProgressCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()
            callback.training_bar = None


def stopped_at(trainer, after_step=None):
    """
    `("at step N; last checkpoint: ...", checkpoint)` for the one line that reports a run stopped during training
    (`"after step N; ..."` when a check stopped it once step `after_step` had finished); `checkpoint` is `None` before
    the first save.
    """
    from ..run.checkpoints import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(trainer.args.output_dir, quiet=True)
    saved = (
        f"last checkpoint: {checkpoint}" if checkpoint else f"no checkpoint yet (save_steps={trainer.args.save_steps})"
    )
    where = f"at step {trainer.state.global_step + 1}" if after_step is None else f"after step {after_step}"
    return f"{where}; {saved}", checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `trainer.train()`: the message says where the run stopped; `checkpoint` is where it can resume."""

    def __init__(self, where, checkpoint):
        super().__init__(where)
        self.checkpoint = checkpoint


class TrainingPreempted(TrainingInterrupted, Preempted):
    """SIGTERM during `trainer.train()`: where the run stopped, what was saved; `checkpoint` is where it can resume."""


def preempted_at(trainer, preemption, abandoned):
    """
    `("stopped by SIGTERM after step N (...); last checkpoint: ...", checkpoint)` for a run that SIGTERM stopped, at
    a step's end (`abandoned` is `None`) or in the middle of one when the grace period ran out (`abandoned` is the
    [`Preempted`] the alarm raised).
    """
    from ..run.checkpoints import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(trainer.args.output_dir, quiet=True)
    grace = f"grace period {preemption.grace_period:g} s"
    step = preemption.stopped_after_step
    if step is None:  # the alarm (or a Ctrl-C) came in the middle of a step
        how = f"at step {trainer.state.global_step + 1} ({abandoned or 'interrupted before the step ended'})"
    elif abandoned is not None:
        how = f"after step {step} (its checkpoint's save did not end within the {grace})"
    elif preemption.saved is not None and checkpoint is not None and Path(checkpoint) == Path(preemption.saved):
        how = f"after step {step} (saved in {preemption.save_seconds:.1f} s; {grace})"
    else:
        how = f"after step {step} (no checkpoint saved: {preemption.skipped_save or 'its save did not complete'})"
    saved = (
        f"last checkpoint: {checkpoint}" if checkpoint else f"no checkpoint yet (save_steps={trainer.args.save_steps})"
    )
    return f"stopped by SIGTERM {how}; {saved}", checkpoint


class StoppedTrainingError(TrainingError):
    """
    A [`TrainingError`] that says where the run stopped: `message (where)`, with `where` "at step N; last
    checkpoint: ..." and `checkpoint` the last complete one (or `None`), for the CLI's resume command.
    """

    def __init__(self, message, where, checkpoint):
        super().__init__(f"{message} ({where})")
        self.message, self.where, self.checkpoint = message, where, checkpoint


@contextlib.contextmanager
def sigterm_stops_the_run():
    """
    SIGTERM outside `trainer.train()` (while the model loads, during the held-out check or the final save) raises
    [`Preempted`], so that the run ends in one line and its lock on `output_dir` is released; Python's default is to
    die at once, silently. [`~fipo_trl.run.preemption.PreemptionCallback`] has its own handler during training.
    """

    def stop(signum, frame):
        raise Preempted("stopped by SIGTERM outside training (nothing new was saved); run the same command again")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def end_process_group():
    """Destroy the distributed process group, if any: a gloo or NCCL group left to the interpreter's exit aborts."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def disk_full_error(error, output_dir) -> str | None:
    """
    The one-line message for `error` when it is a full disk (`ENOSPC` in its chain, or an error raised while saving
    with less than 1 MiB left on `output_dir`'s disk: torch and safetensors report a short write without an errno),
    else `None`.
    """
    import traceback

    chain, cause = [], error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    free = shutil.disk_usage(output_dir).free if Path(output_dir).is_dir() else None
    saving = any("save" in frame.name for frame in traceback.extract_tb(error.__traceback__))
    enospc = any(getattr(item, "errno", None) == errno.ENOSPC for item in chain)
    if not enospc and not (saving and free is not None and free < 2**20):
        return None
    left = f" ({free / 2**20:.1f} MB free)" if free is not None else ""
    return (
        f"no space left on the disk of output_dir {output_dir}{left} while saving a checkpoint: free some space (or "
        "lower save_total_limit) and resume"
    )
