r"""Verifiable math rewards with TRL's reward signature `(completions, **dataset_columns) -> list[float | None]`.

1. [`dapo_accuracy_reward`]: the official DAPO/FIPO scorer (`math_dapo.py`, described in `docs/scorer.md`):
   the text after the last "Answer:" in the last 300 characters, Minerva-normalised, string-equal to the normalised
   `solution`: +1.0, else -1.0. Quirks included; there is no numeric or symbolic equivalence.
2. [`math_verify_reward`]: open-r1/TRL's `\boxed{}` convention checked by `math_verify` (1.0 / 0.0, `None` when the
   gold answer cannot be parsed). Every check runs in a small pool of worker processes that are killed at the
   timeout, because math-verify's own signal-based timeouts do nothing off the main thread (the pool is
   [`fipo_trl.math_verify_pool`]; it starts on the first call).
3. [`dapo_reward_funcs`]: the official reward list, accuracy plus TRL's soft overlong punishment.
4. [`REWARD_FUNCS_REGISTRY`] and [`get_reward_funcs`]: the reward functions of a `fipo-trl train` recipe, by name.

Completions may be plain strings or chat messages (the last assistant message is scored). Ground truth comes from
the `solution` column that the loaders of [`fipo_trl.data`] produce.
"""

import atexit
import functools
import importlib
import math
import os
import re
import sys
import threading

from .errors import UsageError
from .reward_guard import check_same_length, guard_reward


INVALID_ANSWER = "[INVALID]"

# docs/scorer.md, step 2: the word "answer", optional whitespace, a colon, optional whitespace, rest of the line
_ANSWER_LINE = re.compile(r"answer\s*:\s*([^\n]+)", re.IGNORECASE)
_SCORED_TAIL_CHARS = 300  # docs/scorer.md, step 1
_BRACE = re.compile(r"[{}]")

# docs/scorer.md, normalisation (b): plain replacements, in order
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
# docs/scorer.md, normalisation (c): deleted strings, in order
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
# docs/scorer.md, normalisation (d): regular-expression rewrites, in order, each one pass over the string
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
    Minerva-style normalisation of the official DAPO scorer, quirks included (`docs/scorer.md`).

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
    quirks included: `42.` and `42` differ, `0.5` and `\\frac{1}{2}` differ (`docs/scorer.md`).

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
    check_same_length(completions=completions, solution=solution)
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
    tokens and falls linearly to -1 at `max_completion_len` (docs/fipo.md §3.2).

    Args:
        max_completion_len (`int`, *optional*, defaults to `20480`):
            Maximum completion length in tokens; the official 32B run's `max_response_length`. Set it to your
            `GRPOConfig.max_completion_length`.
        soft_punish_cache (`int`, *optional*, defaults to `4096`):
            Length of the penalty ramp in tokens; the official 32B run's overlong buffer.

    Returns:
        `list`: reward functions for `FIPOTrainer(reward_funcs=...)` or any TRL trainer.
    """
    # imported here so that importing the rewards (e.g. in a reward worker process) does not import TRL
    from trl.rewards import get_soft_overlong_punishment

    return [dapo_accuracy_reward, get_soft_overlong_punishment(max_completion_len, soft_punish_cache)]


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
        texts = [_completion_text(completion) for completion in completions]
        pairs = zip(solution, texts, strict=True)
        tasks = [(_solution_text(truth), text) for truth, text in pairs if truth is not None]
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


# --- the rewards of a `fipo-trl train` recipe, by name ---------------------------------------------------------------


def _soft_overlong(script_args, training_args):
    from trl.rewards import get_soft_overlong_punishment

    return get_soft_overlong_punishment(
        max_completion_len=training_args.max_completion_length,
        soft_punish_cache=script_args.overlong_buffer_length,
    )


# name → builder `(script_args, training_args) -> reward function`; a recipe names its rewards with these keys
REWARD_FUNCS_REGISTRY = {
    "dapo_accuracy": lambda script_args, training_args: dapo_accuracy_reward,
    "math_verify": lambda script_args, training_args: math_verify_reward,
    "soft_overlong": _soft_overlong,
}


def with_accuracy_metric(reward_func):
    """`reward_func`, also logging `accuracy` (the fraction of completions it scores above 0) through TRL."""

    def accuracy_logged(completions, log_metric=None, **kwargs):
        rewards = reward_func(completions, log_metric=log_metric, **kwargs)
        scored = [reward for reward in rewards if reward is not None and not math.isnan(reward)]
        if log_metric is not None and scored:
            log_metric("accuracy", sum(reward > 0 for reward in scored) / len(scored))
        return rewards

    accuracy_logged.__name__ = getattr(reward_func, "__name__", type(reward_func).__name__)  # TRL's metric name
    return accuracy_logged


def get_reward_funcs(script_args, training_args) -> list:
    """
    The reward functions of a recipe's `reward_funcs`: names of [`REWARD_FUNCS_REGISTRY`] or dotted import paths.

    `soft_overlong` is TRL's DAPO overlong penalty with `max_completion_len=training_args.max_completion_length` and
    `soft_punish_cache=script_args.overlong_buffer_length`. The first function is the correctness reward: it also
    logs `accuracy` ([`with_accuracy_metric`]) and scores the held-out check.

    Raises:
        UsageError: for an unknown name, a dotted path that does not import, or an empty list.
    """
    funcs = []
    for name in script_args.reward_funcs:
        if name in REWARD_FUNCS_REGISTRY:
            funcs.append(REWARD_FUNCS_REGISTRY[name](script_args, training_args))
        elif "." in name:
            module_name, attr = name.rsplit(".", 1)
            sys.path.insert(0, os.getcwd())  # a recipe may name a module next to it, as TRL's grpo script allows
            try:
                funcs.append(getattr(importlib.import_module(module_name), attr))
            except (ImportError, AttributeError) as exc:
                raise UsageError(f"cannot import reward function {name!r}: {exc}") from None
        else:
            raise UsageError(
                f"unknown reward function {name!r}: use {', '.join(REWARD_FUNCS_REGISTRY)} or a dotted import path"
            )
    if not funcs:
        raise UsageError("reward_funcs is empty: name at least one reward function")
    funcs[0] = with_accuracy_metric(funcs[0])
    # each reward named as the recipe names it in its errors, and stopped when it gives no signal
    return [guard_reward(func, name=name) for func, name in zip(funcs, script_args.reward_funcs, strict=True)]
