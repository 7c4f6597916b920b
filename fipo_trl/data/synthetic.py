"""Seeded synthetic math problems with exact integer answers, in the "Answer: <n>" format the DAPO scorer reads.

Used by the offline quickstart (`configs/quickstart.yaml`), the reasoning testbed (`configs/long_sum.yaml`) and the
model builders in `scripts/`. Three tasks:

1. `addition`: `"37+48=?\n"` → `"Answer: 85"` (two operands of `digits` digits each).
2. `linear`: `"3x+5=26, x=?\n"` → `"Answer: 7"` (solve `a·x + b = c` for an integer x; a, x of one digit).
3. `long_sum`: `"23+45+17+88=?\n"` → `"Answer: 173"` (3 to 6 operands of `digits` digits each). A model may answer
   directly or write the running sums first, one per line (`step_by_step_answer`): longer, and the only way a tiny
   model gets it right. `reasoning_steps` tells the two apart in a sampled completion.

The same `(task, seed, size)` always gives the same rows, and different seeds give disjoint-looking but possibly
overlapping problems: pass `exclude` to keep a held-out set apart from a training set.
"""

import random
import re

from datasets import Dataset


SYNTHETIC_TASKS = ("addition", "linear", "long_sum")
LONG_SUM_OPERANDS = (3, 6)  # fewest and most operands of a `long_sum` problem
_STEP_LINE = re.compile(r"\d+\+\d+=\d+")  # one running sum, "68+17=85"


def format_answer(answer):
    """The completion a perfect model writes for `answer`: a single "Answer: <n>" line."""
    return f"Answer: {answer}"


def _addition(rng, digits):
    low, high = 10 ** (digits - 1), 10**digits - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    return f"{a}+{b}=?\n", a + b


def _linear(rng, digits):
    # x and a of one digit keep the problem small; b, c grow with `digits`
    a, x = rng.randint(2, 9), rng.randint(1, 9)
    b = rng.randint(0, 10**digits - 1)
    return f"{a}x+{b}={a * x + b}, x=?\n", x


def _long_sum(rng, digits):
    low, high = 10 ** (digits - 1), 10**digits - 1
    operands = [rng.randint(low, high) for _ in range(rng.randint(*LONG_SUM_OPERANDS))]
    return "+".join(map(str, operands)) + "=?\n", sum(operands)


def step_by_step_answer(prompt):
    """
    The step-by-step completion of a `long_sum` (or `addition`) prompt: one running sum per line, then the answer.

    `"23+45+17+88=?\n"` → `"23+45=68\n68+17=85\n85+88=173\nAnswer: 173"`. Each line is one two-number addition,
    so a model that can add two numbers and copy the next operand gets the whole sum right.
    """
    operands = [int(x) for x in prompt.split("=")[0].split("+")]
    lines, total = [], operands[0]
    for operand in operands[1:]:
        lines.append(f"{total}+{operand}={total + operand}")
        total += operand
    return "\n".join(lines + [format_answer(total)])


def reasoning_steps(completion):
    """
    Number of running-sum lines (`"68+17=85"`) a completion writes before its last "Answer:" line (or in all of it,
    when there is none). 0 means a direct answer; `> 0` a step-by-step one, whether its sums are right or not.
    """
    head = completion.rsplit("Answer:", 1)[0]
    return sum(1 for line in head.splitlines() if _STEP_LINE.fullmatch(line.strip()))


def is_step_by_step(completion):
    """Whether a completion reasons before answering (at least one running-sum line; see `reasoning_steps`)."""
    return reasoning_steps(completion) > 0


def generate_problems(size, seed=0, task="addition", digits=2, exclude=()):
    """
    Generate `size` distinct problems, deterministically from `seed`.

    Args:
        size (`int`):
            Number of rows.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the private `random.Random` used (the global RNG is left alone).
        task (`str`, *optional*, defaults to `"addition"`):
            One of `SYNTHETIC_TASKS`.
        digits (`int`, *optional*, defaults to `2`):
            Digits per operand (`addition`, `long_sum`) or of the constant term (`linear`).
        exclude (`Iterable[str]`, *optional*):
            Prompts that must not appear (e.g. the training prompts, when building a held-out set).

    Returns:
        `list[dict]`: rows `{"prompt": str, "solution": str}`; the solution is the bare answer (`"85"`), which the
        "Answer:" scorer compares with the text after "Answer:".
    """
    makers = {"addition": _addition, "linear": _linear, "long_sum": _long_sum}
    if task not in makers:
        raise ValueError(f"Unknown synthetic task {task!r}; choose one of {SYNTHETIC_TASKS}.")
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}.")
    rng = random.Random(f"{task}-{digits}-{seed}")  # a string seed hashes deterministically across runs
    seen = set(exclude)
    rows = []
    for _ in range(100 * size + 1000):  # bounded: a tiny problem space must fail loudly, not loop forever
        if len(rows) == size:
            return rows
        prompt, answer = makers[task](rng, digits)
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"prompt": prompt, "solution": str(answer)})
    raise ValueError(f"Only {len(rows)} distinct {task!r} problems with digits={digits}; asked for {size}.")


def synthetic_dataset(size, seed=0, task="addition", digits=2, exclude=()):
    """[`generate_problems`] as a `datasets.Dataset` with columns `prompt` and `solution`."""
    return Dataset.from_list(generate_problems(size, seed=seed, task=task, digits=digits, exclude=exclude))


def train_and_heldout(train_size, heldout_size, seed=0, task="addition", digits=2):
    """A training set and a held-out set of the same task that share no prompt."""
    train = generate_problems(train_size, seed=seed, task=task, digits=digits)
    heldout = generate_problems(
        heldout_size, seed=seed + 1_000_003, task=task, digits=digits, exclude=[row["prompt"] for row in train]
    )
    return Dataset.from_list(train), Dataset.from_list(heldout)
