"""
Stopping cleanly on SIGTERM, the signal by which Slurm (and Kubernetes, systemd, `timeout`) ends a job: on
preemption, at `--signal=TERM@N` before a time limit, or on `scancel`. SIGKILL follows after a grace period (Slurm's
`KillWait`, 30 s by default, or the partition's `GraceTime`).

[`PreemptionCallback`] records the signal and lets the current optimizer step finish. At the step's end every process
agrees to stop (`Accelerator.check_trigger`, so that the processes of a run stop at the same step however the signal
reached them), and the run saves a checkpoint there when the last save of this run took less time than is left of
`grace_period` (before any timed save the cost is unknown, and the run tries). A step that has not ended
`grace_period` seconds after the signal is abandoned: the alarm raises [`~fipo_trl.errors.Preempted`] in the middle
of it, and the run ends from its last complete checkpoint. Either way the run ends within `grace_period` seconds of
the signal, with one line saying where it stopped and how to resume, and exit status 143.
"""

import signal
import time

from transformers import TrainerCallback

from ..errors import Preempted


class PreemptionCallback(TrainerCallback):
    """
    Turns SIGTERM into a clean stop: finish the step, save if the save fits in `grace_period`, stop training.

    Add it before [`~fipo_trl.run.checkpoints.CheckpointMarkerCallback`], whose `on_step_end` must see the save
    decided here. Call [`install`] before `trainer.train()` and [`uninstall`] after it.

    Args:
        accelerator (`accelerate.Accelerator`):
            The trainer's accelerator: the processes agree on stopping and saving through it.
        grace_period (`float`):
            Seconds from the signal to the end of the run (step, save and exit), >= 0; keep it under the scheduler's
            SIGTERM-to-SIGKILL delay. 0 stops at once, in the middle of the step, from the last checkpoint.
    """

    def __init__(self, accelerator, grace_period: float):
        self.accelerator = accelerator
        self.grace_period = grace_period
        self.signalled_at = None  # time.monotonic() of the first SIGTERM on this process
        self.stopped_after_step = None  # the step after which the run stopped, once all processes agreed
        self.saved = None  # the checkpoint this callback had saved on stopping, if any
        self.save_seconds = None  # how long this run's last save took
        self.skipped_save = None  # why no checkpoint was saved on stopping
        self._save_started = None
        self._previous = {}

    def install(self):
        self._previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_sigterm),
            signal.SIGALRM: signal.signal(signal.SIGALRM, self._on_alarm),
        }

    def uninstall(self):
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @property
    def preempted(self) -> bool:
        # a run stops as preempted when any of its processes was signalled: the others know it from check_trigger
        return self.signalled_at is not None or self.stopped_after_step is not None

    def _on_sigterm(self, signum, frame):
        if self.signalled_at is not None:  # a launcher (torchrun) passes the job's signal on: one is enough
            return
        self.signalled_at = time.monotonic()
        if self.grace_period == 0:  # no time to finish the step: stop now (setitimer(0) would disarm the alarm)
            raise Preempted("preemption_grace_period is 0: stopped at once")
        self.accelerator.set_trigger()
        signal.setitimer(signal.ITIMER_REAL, self.grace_period)

    def _on_alarm(self, signum, frame):
        raise Preempted(f"the step did not end within the grace period of {self.grace_period:g} s")

    def on_step_end(self, args, state, control, **kwargs):
        if not self.accelerator.check_trigger():  # every process takes part, signalled or not
            if control.should_save:
                self._save_started = time.monotonic()
            return
        # the main process decides whether a save fits, so that all processes save or none does
        from accelerate.utils import broadcast_object_list

        decision = [None]
        if self.accelerator.is_main_process:
            decision = [self._save_decision()]
        broadcast_object_list(decision, from_process=0)
        save, self.skipped_save = decision[0]
        control.should_save = save
        control.should_training_stop = True
        self.stopped_after_step = state.global_step
        if save:
            self._save_started = time.monotonic()
            self.saved = f"{args.output_dir}/checkpoint-{state.global_step}"

    def _save_decision(self) -> tuple[bool, str | None]:
        """`(save, why not)`: a save is made when the last one of this run fits in what is left of the grace."""
        left = self.grace_period - (time.monotonic() - (self.signalled_at or time.monotonic()))
        if self.save_seconds is None or self.save_seconds <= left:
            return True, None
        return False, f"a save takes {self.save_seconds:.0f} s, {max(left, 0):.0f} s of the grace period were left"

    def on_save(self, args, state, control, **kwargs):
        if self._save_started is not None:
            self.save_seconds = time.monotonic() - self._save_started
            self._save_started = None
