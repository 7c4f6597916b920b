"""math-verify in killable worker processes: the pool behind [`~fipo_trl.rewards.MathVerifyReward`].

math-verify's own timeouts are signal-based and do nothing off the main thread (dataloader workers, reward threads),
and sympy can spend minutes on one expression. So every check runs in one of a few worker processes that read
`(solution, text)` pairs from a pipe and answer 1.0, 0.0 or `None`; a worker still busy at the timeout is killed and
replaced. A worker runs this very file as its main program (not the `fipo_trl` package, whose `__init__` would
import torch), so this module imports nothing from the package.
"""

import functools
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from collections import deque


_WORKER_READY = "ready"
_WORKER_START_TIMEOUT_S = 120.0  # a cold import of sympy + math-verify on a loaded node
_WORKER_ADDRESS_SPACE = 4 << 30  # a runaway big-integer power must hit MemoryError, not the node's OOM killer
_WORKER_ALARM_GRACE_S = 5  # the worker kills itself this long after a task's timeout, should its parent be gone
# runs this very file (not the fipo_trl package, whose __init__ imports torch) as the worker's main program
_WORKER_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__math_verify_worker__')"


def _write_message(stream, obj) -> None:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack("<Q", len(payload)) + payload)
    while view:
        view = view[stream.write(view) :]
    stream.flush()


def _read_exact(stream, size: int) -> bytes:
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            raise EOFError("the other end of the pipe is gone")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_message(stream):
    """The next message on `stream`; `EOFError` when the other side is gone."""
    (size,) = struct.unpack("<Q", _read_exact(stream, 8))
    return pickle.loads(_read_exact(stream, size))


def _worker_main(alarm_s: int) -> None:
    """Serve `(solution, text)` checks from stdin until it closes; answer each with 1.0, 0.0 or `None`."""
    import logging
    import resource
    import signal

    # Ctrl-C reaches the whole process group: the parent stops the run and closes the pipe, and the worker ends on
    # EOF instead of printing a KeyboardInterrupt traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    output = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # library prints go to stderr, never into the message stream
    if sys.platform == "linux":
        resource.setrlimit(resource.RLIMIT_AS, (_WORKER_ADDRESS_SPACE, _WORKER_ADDRESS_SPACE))
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # "timeout disabled": the parent enforces it
    # TRL's accuracy_reward extraction: \boxed{} first, only anchored LaTeX, units normalised
    prediction_config = [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(units=True),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
    ]

    @functools.lru_cache(maxsize=1024)
    def parse_solution(solution):
        # a bare ground truth such as \frac{\sqrt{3}}{2} only parses inside math delimiters
        return parse(solution if "$" in solution or "\\boxed" in solution else f"${solution}$", parsing_timeout=None)

    def score(solution, text):
        gold = parse_solution(solution)
        if not gold:
            return None
        answer = parse(text, prediction_config, extraction_mode="first_match", parsing_timeout=None)
        return float(verify(gold, answer, timeout_seconds=None))

    _write_message(output, _WORKER_READY)
    while True:
        try:
            task = _read_message(sys.stdin.buffer)
        except EOFError:  # the parent closed the pipe or exited
            return
        signal.alarm(alarm_s)  # SIGALRM's default action ends the process even inside C code
        try:
            result = score(*task)
        except Exception:  # e.g. RecursionError deep in sympy: wrong, as math-verify scores its own errors
            result = 0.0
        signal.alarm(0)
        _write_message(output, result)


class _Worker:
    """One math-verify process: `task` is the index it is working on, `deadline` when it will be killed."""

    def __init__(self, alarm_s: int):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, os.path.abspath(__file__), str(alarm_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self.started = time.monotonic()
        self.ready = False
        self.task = None
        self.deadline = None

    def fileno(self) -> int:
        return self.process.stdout.fileno()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()

    def forget(self) -> None:
        """Close this process's copies of the pipes of a worker that belongs to the parent of a fork."""
        self.process.stdin.close()
        self.process.stdout.close()


class MathVerifyPool:
    """A fixed number of math-verify processes; a check that outlives `timeout_s` gets its process killed."""

    def __init__(self, num_workers: int, timeout_s: float):
        self.timeout_s = timeout_s
        self.alarm_s = int(timeout_s) + 1 + _WORKER_ALARM_GRACE_S
        self.pid = os.getpid()
        self.workers = [_Worker(self.alarm_s) for _ in range(num_workers)]

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers[self.workers.index(worker)] = _Worker(self.alarm_s)

    def map(self, tasks: list[tuple[str, str]]) -> tuple[list[float | None], int]:
        """Score `(solution, text)` pairs; return the scores (0.0 for a timeout) and the number of timeouts."""
        results = [0.0] * len(tasks)
        pending = deque(range(len(tasks)))
        num_timeouts = 0
        while pending or any(w.task is not None for w in self.workers):
            now = time.monotonic()
            for worker in self.workers:
                if worker.ready and worker.task is None and pending:
                    index = pending.popleft()
                    try:
                        _write_message(worker.process.stdin, tasks[index])
                    except OSError:  # the process died while idle: retry the task on a fresh one
                        pending.appendleft(index)
                        self._replace(worker)
                        continue
                    worker.task, worker.deadline = index, time.monotonic() + self.timeout_s
            busy = [w for w in self.workers if w.task is not None]
            waiting = [w for w in self.workers if w.task is not None or not w.ready]
            if busy:
                wait_s = min(w.deadline for w in busy) - now
            else:
                wait_s = min(w.started for w in waiting) + _WORKER_START_TIMEOUT_S - now
                if wait_s <= 0:
                    raise RuntimeError(f"math-verify workers did not start in {_WORKER_START_TIMEOUT_S:.0f} s")
            readable, _, _ = select.select(waiting, [], [], max(wait_s, 0.0))
            for worker in readable:
                try:
                    message = _read_message(worker.process.stdout)
                except EOFError:
                    exit_code = worker.process.wait()
                    if not worker.ready and exit_code > 0:  # an error, not a signal: a new process would fail too
                        raise RuntimeError(f"a math-verify worker failed to start ({exit_code}); see stderr") from None
                    if worker.task is not None:  # killed mid-task (by the OS, say): no verdict, like a timeout
                        num_timeouts += 1
                        worker.task = None
                    self._replace(worker)
                    continue
                if not worker.ready:
                    worker.ready = True
                else:
                    results[worker.task] = message
                    worker.task = None
            now = time.monotonic()
            for worker in self.workers:
                if worker.task is not None and now >= worker.deadline:
                    num_timeouts += 1
                    worker.task = None
                    self._replace(worker)
        return results, num_timeouts

    def close(self) -> None:
        for worker in self.workers:
            worker.kill() if os.getpid() == self.pid else worker.forget()
        self.workers = []


if __name__ == "__math_verify_worker__":
    _worker_main(int(sys.argv[2]))
