r"""
The official DAPO/FIPO scorer (`math_dapo.py`, described in `docs/scorer.md`) as a TRL reward: the text after the
last "Answer:" in the last 300 characters, Minerva-normalised, string-equal to the normalised `solution`: +1.0, else
-1.0. Quirks included; there is no numeric or symbolic equivalence. Also the official reward list
([`dapo_reward_funcs`]: accuracy plus TRL's soft overlong punishment).
"""

import functools
import re

from ..official import MAX_COMPLETION_LENGTH, OVERLONG_BUFFER
from ..text import completion_text, solution_text
from .guard import check_same_length


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
        answer = extract_dapo_answer(completion_text(completion))
        answers.append(answer)
        if truth is None:
            rewards.append(None)
        else:
            rewards.append(1.0 if answer == _normalized_solution(solution_text(truth)) else -1.0)
    if log_extra is not None:
        log_extra("dapo_answer", answers)
    return rewards


def dapo_reward_funcs(
    max_completion_len: int = MAX_COMPLETION_LENGTH, soft_punish_cache: int = OVERLONG_BUFFER
) -> list:
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
