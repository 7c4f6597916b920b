r"""
open-r1/TRL's `\boxed{}` accuracy checked by `math_verify` (1.0 / 0.0, `None` when the gold answer cannot be parsed).
Every check runs in a small pool of worker processes that are killed at the timeout, because math-verify's own
signal-based timeouts do nothing off the main thread (the pool is [`fipo_trl.rewards.math_verify_pool`]; it starts
on the first call).
"""

import atexit
import os
import threading

from .dapo import completion_text, solution_text
from .guard import check_same_length


class MathVerifyReward:
    r"""
    Accuracy reward of open-r1/TRL's `\boxed{}` convention, checked by `math_verify` in killable worker processes.

    The ground truth is parsed with math-verify's defaults (inside `$...$` when it has no delimiters), the
    completion with TRL's `accuracy_reward` settings (`\boxed{}` first, anchored LaTeX only), and the two are
    compared with `math_verify.verify`. Each check is bounded in wall time wherever the reward runs (main thread,
    other threads, dataloader workers, every accelerate process): it runs in a pool of `num_workers` processes and a
    process still busy after `timeout_s` seconds is killed and replaced. Workers start on the first call.

    Args:
        timeout_s (`float`, *optional*, defaults to `5.0`):
            Wall-time budget of one check (parsing both answers and verifying). A check that runs out scores 0.0,
            as math-verify's own timeout would, and is counted in the `math_verify_reward/timeouts` metric.
        num_workers (`int`, *optional*):
            Number of worker processes. Defaults to `min(4, os.cpu_count())`.

    Returns (when called):
        `list[float | None]`: 1.0 if equivalent, 0.0 otherwise, `None` when the ground truth cannot be parsed
        (TRL skips the row) or is `None`.
    """

    __name__ = "math_verify_reward"

    def __init__(self, timeout_s: float = 5.0, num_workers: int | None = None):
        self.timeout_s = timeout_s
        self.num_workers = num_workers or min(4, os.cpu_count() or 1)
        self.num_timeouts = 0  # since creation, for use outside TRL
        self._lock = threading.Lock()
        self._pool = None
        self._hooks_registered = False

    def _after_fork(self) -> None:
        # a forked child (a dataloader worker) must not wait on its parent's lock or talk to its parent's workers
        self._lock = threading.Lock()
        if self._pool is not None:
            self._pool.close()  # in the child this only closes the child's copies of the pipes
            self._pool = None

    def __call__(self, completions: list, solution: list, log_metric=None, **kwargs) -> list[float | None]:
        check_same_length(completions=completions, solution=solution)
        texts = [completion_text(completion) for completion in completions]
        pairs = zip(solution, texts, strict=True)
        tasks = [(solution_text(truth), text) for truth, text in pairs if truth is not None]
        with self._lock:  # one batch at a time per pool; other threads wait for their turn
            if self._pool is None:
                from .math_verify_pool import MathVerifyPool

                if not self._hooks_registered:  # on first use, not at import: the module-level instance is free
                    atexit.register(self.close)
                    os.register_at_fork(after_in_child=self._after_fork)
                    self._hooks_registered = True
                self._pool = MathVerifyPool(self.num_workers, self.timeout_s)
            scores, num_timeouts = self._pool.map(tasks)
        self.num_timeouts += num_timeouts
        if log_metric is not None:
            log_metric("math_verify_reward/timeouts", num_timeouts)
        scores = iter(scores)
        return [None if truth is None else next(scores) for truth in solution]

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __getstate__(self):
        # processes and locks do not pickle; a copy in another process starts its own workers
        return {"timeout_s": self.timeout_s, "num_workers": self.num_workers, "num_timeouts": 0}

    def __setstate__(self, state):
        self.__init__(state["timeout_s"], state["num_workers"])


def get_math_verify_reward(timeout_s: float = 5.0, num_workers: int | None = None) -> MathVerifyReward:
    """A [`MathVerifyReward`] with its own worker pool and timeout; see its docstring for the arguments."""
    return MathVerifyReward(timeout_s=timeout_s, num_workers=num_workers)


math_verify_reward = MathVerifyReward()
