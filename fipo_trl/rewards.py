r"""Verifiable math rewards with TRL's reward signature `(completions, **dataset_columns) -> list[float | None]`.

1. [`dapo_accuracy_reward`]: the official DAPO/FIPO scorer (`math_dapo.py`, described in `docs/dapo-scorer.md`):
   the text after the last "Answer:" in the last 300 characters, Minerva-normalised, string-equal to the normalised
   `solution`: +1.0, else -1.0. Quirks included; there is no numeric or symbolic equivalence.
2. [`math_verify_reward`]: open-r1/TRL's `\boxed{}` convention checked by `math_verify` (1.0 / 0.0, `None` when the
   gold answer cannot be parsed). Every check runs in a small pool of worker processes that are killed at the
   timeout, because math-verify's own signal-based timeouts do nothing off the main thread.
3. [`dapo_reward_funcs`]: the official reward list, accuracy plus TRL's soft overlong punishment.

Completions may be plain strings or chat messages (the last assistant message is scored). Ground truth comes from
the `solution` column that the loaders of [`fipo_trl.data`] produce.
"""

import atexit
import functools
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import threading
import time
from collections import deque


INVALID_ANSWER = "[INVALID]"

# docs/dapo-scorer.md, step 2: the word "answer", optional whitespace, a colon, optional whitespace, rest of the line
_ANSWER_LINE = re.compile(r"answer\s*:\s*([^\n]+)", re.IGNORECASE)
_SCORED_TAIL_CHARS = 300  # docs/dapo-scorer.md, step 1
_BRACE = re.compile(r"[{}]")

# docs/dapo-scorer.md, normalisation (b): plain replacements, in order
_SUBSTITUTIONS = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
]
# docs/dapo-scorer.md, normalisation (c): deleted strings, in order
_REMOVED_EXPRESSIONS = [
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    "\\mathrm{th}",
    "^\\circ",
    "^{\\circ}",
    "\\;",
    ",\\!",
    "{,}",
    '"',
    "\\dots",
]
# docs/dapo-scorer.md, normalisation (d): regular-expression rewrites, in order, each one pass over the string
_REWRITES = [
    (re.compile(r"(.*?)\$(.*?)\$(.*)"), r"$\2$"),
    (re.compile(r"\\text\{(.*?)\}"), r"\1"),
    (re.compile(r"\\textbf\{(.*?)\}"), r"\1"),
    (re.compile(r"\\overline\{(.*?)\}"), r"\1"),
    (re.compile(r"\\boxed\{(.*)\}"), r"\1"),
    (re.compile(r"frac([^{])(.)"), r"frac{\1}{\2}"),
    (re.compile(r"sqrt([^{])"), r"sqrt{\1}"),
]


def normalize_final_answer(final_answer: str) -> str:
    r"""
    Minerva-style normalisation of the official DAPO scorer, quirks included (`docs/dapo-scorer.md`).

    Keeps what follows the last `=`, drops spaces, a fixed list of unit words and `\text{}` wrappers, keeps the
    first `$...$` part, unwraps `\boxed{}`, expands `\frac12` and `\sqrt2`, and drops commas from plain integers.

    Args:
        final_answer (`str`):
            A raw answer, e.g. the text after "Answer:" or a ground truth.

    Returns:
        `str`: the normalised answer, compared for string equality by [`dapo_accuracy_reward`].

    Example:
    ```python
    >>> normalize_final_answer(r"x = \boxed{4,200} \text{ dollars}")
    '4200'
    ```
    """
    final_answer = final_answer.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expression in _REMOVED_EXPRESSIONS:
        final_answer = final_answer.replace(expression, "")
    for pattern, replacement in _REWRITES:
        final_answer = pattern.sub(replacement, final_answer)
    final_answer = final_answer.replace("$", "")
    if final_answer.replace(",", "").isdigit():
        final_answer = final_answer.replace(",", "")
    return final_answer.strip()


def extract_dapo_answer(text: str) -> str:
    """
    The normalised prediction that the official DAPO scorer compares with the ground truth.

    Only the last 300 characters of `text` are read; the answer is the rest of the line after the last
    "Answer:" (any case, spaces around the colon allowed), passed through [`normalize_final_answer`].

    Args:
        text (`str`):
            A model response.

    Returns:
        `str`: the normalised answer, or `"[INVALID]"` when the tail of `text` has no "Answer:" line.
    """
    matches = _ANSWER_LINE.findall(text[-_SCORED_TAIL_CHARS:])
    return normalize_final_answer(matches[-1]) if matches else INVALID_ANSWER


def extract_boxed_answer(text: str) -> str | None:
    r"""
    The content of the last `\boxed{...}` in `text`, with balanced braces.

    Args:
        text (`str`):
            A model response.

    Returns:
        `str` or `None`: the content between the braces, or `None` when there is no complete `\boxed{...}`.

    Example:
    ```python
    >>> extract_boxed_answer(r"so \boxed{1} or rather \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    ```
    """
    end = len(text)
    start = text.rfind("\\boxed{")
    while start != -1:
        depth = 0
        for brace in _BRACE.finditer(text, start + len("\\boxed"), end):
            depth += 1 if brace.group() == "{" else -1
            if depth == 0:
                return text[start + len("\\boxed{") : brace.start()]
        # unbalanced: an earlier \boxed{ can only close before this one starts, so scan no further than here
        end = start
        start = text.rfind("\\boxed{", 0, end)
    return None


def _completion_text(completion) -> str:
    """The text to score: a plain string, or the content of the last assistant message of a chat completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                content = message.get("content")
                if isinstance(content, list):  # content parts, as multimodal chat templates write them
                    content = "".join(part.get("text") or "" for part in content if isinstance(part, dict))
                return content if isinstance(content, str) else ""
    return ""


def _solution_text(solution) -> str:
    """A ground truth as text; integral floats (parquet columns with missing values) lose their `.0`."""
    if isinstance(solution, float) and solution.is_integer():
        return str(int(solution))
    return solution if isinstance(solution, str) else str(solution)


_normalized_solution = functools.lru_cache(maxsize=4096)(normalize_final_answer)  # a group of G shares one solution


def dapo_accuracy_reward(completions: list, solution: list, log_extra=None, **kwargs) -> list[float | None]:
    """
    The official DAPO/FIPO accuracy reward: +1.0 if the "Answer:" line matches the ground truth, else -1.0.

    Same score as the official scorer (`verl/utils/reward_score/math_dapo.py`, default mode) on the same input,
    quirks included: `42.` and `42` differ, `0.5` and `\\frac{1}{2}` differ (`docs/dapo-scorer.md`).

    Args:
        completions (`list[str]` or `list[list[dict]]`):
            Plain-text completions, or chat completions whose last assistant message is scored. Anything that is
            not text scores -1.0.
        solution (`list[str]`):
            Ground-truth answers (the `solution` column). A `None` solution gives a `None` reward (skipped by TRL).
        log_extra (`callable`, *optional*):
            Provided by TRL's trainers; logs the extracted answers to the completions table as `dapo_answer`.
        **kwargs:
            Other dataset columns and trainer arguments, ignored.

    Returns:
        `list[float | None]`: one reward per completion.

    Example:
    ```python
    >>> dapo_accuracy_reward(["...\\nAnswer: 42", "...\\nAnswer: 42."], solution=["42", "42"])
    [1.0, -1.0]
    ```
    """
    rewards, answers = [], []
    for completion, truth in zip(completions, solution, strict=True):
        answer = extract_dapo_answer(_completion_text(completion))
        answers.append(answer)
        if truth is None:
            rewards.append(None)
        else:
            rewards.append(1.0 if answer == _normalized_solution(_solution_text(truth)) else -1.0)
    if log_extra is not None:
        log_extra("dapo_answer", answers)
    return rewards


def dapo_reward_funcs(max_completion_len: int = 20480, soft_punish_cache: int = 4096) -> list:
    """
    The official FIPO/DAPO reward list: [`dapo_accuracy_reward`] and TRL's soft overlong punishment.

    TRL sums the two, so a reward lies in [-2, 1]: the penalty is 0 up to `max_completion_len - soft_punish_cache`
    tokens and falls linearly to -1 at `max_completion_len` (spec §3.2).

    Args:
        max_completion_len (`int`, *optional*, defaults to `20480`):
            Maximum completion length in tokens; the official 32B run's `max_response_length`. Set it to your
            `GRPOConfig.max_completion_length`.
        soft_punish_cache (`int`, *optional*, defaults to `4096`):
            Length of the penalty ramp in tokens; the official 32B run's overlong buffer.

    Returns:
        `list`: reward functions for `FIPOTrainer(reward_funcs=...)` or any TRL trainer.
    """
    # imported here so that math-verify worker processes, which run this file, never import TRL
    from trl.rewards import get_soft_overlong_punishment

    return [dapo_accuracy_reward, get_soft_overlong_punishment(max_completion_len, soft_punish_cache)]


# ----------------------------------------------------------------------------------------------------------------
# math-verify in killable worker processes
# ----------------------------------------------------------------------------------------------------------------

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


class _MathVerifyPool:
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
        atexit.register(self.close)
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # a forked child (a dataloader worker) must not wait on its parent's lock or talk to its parent's workers
        self._lock = threading.Lock()
        if self._pool is not None:
            self._pool.close()  # in the child this only closes the child's copies of the pipes
            self._pool = None

    def __call__(self, completions: list, solution: list, log_metric=None, **kwargs) -> list[float | None]:
        texts = [_completion_text(completion) for completion in completions]
        pairs = zip(solution, texts, strict=True)
        tasks = [(_solution_text(truth), text) for truth, text in pairs if truth is not None]
        with self._lock:  # one batch at a time per pool; other threads wait for their turn
            if self._pool is None:
                self._pool = _MathVerifyPool(self.num_workers, self.timeout_s)
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


if __name__ == "__math_verify_worker__":
    _worker_main(int(sys.argv[2]))
