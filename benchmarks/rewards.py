r"""Throughput and latency of the rewards in `fipo_trl.rewards`; prints one table.

    python benchmarks/rewards.py                 # defaults: 20,000 DAPO completions, math-verify timeout 5 s
    python benchmarks/rewards.py --timeout 2 --math-verify-calls 100

Rows:
1. `dapo_accuracy_reward` on completions of ~20k tokens (80,000 characters) and of 1,000 characters, as plain strings
   and as chat messages, in one process (one core). Target: >= 5,000 completions/s at 80k characters.
2. `math_verify_reward` (its worker pool) on a batch of `\boxed{}` completions (completions/s), and the wall time
   of single-completion calls, p50 / p99 / max, over a stream that includes expressions that make sympy explode.
   Target: no call longer than the timeout + 1 s.
Synthetic completions only (filler text with a final answer line); nothing is downloaded.
"""

import argparse
import os
import random
import statistics
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fipo_trl.rewards import dapo_accuracy_reward, get_math_verify_reward  # noqa: E402


DAPO_TARGET_PER_S = 5000
ANSWERS = ["42", "\\frac{1}{2}", "\\sqrt{3}", "1,024", "x^2+1", "(1, 2)", "$17$", "0.25"]
EXPLODING = "\\boxed{2^{2^{2^{2^{2^{2}}}}}}"  # sympy evaluates this tower for minutes


def filler(num_chars: int, rng: random.Random) -> str:
    words = ["so", "we", "get", "the", "sum", "of", "terms", "=", "12", "+", "x", "\\frac{a}{b}", "then", "check"]
    text = " ".join(rng.choices(words, k=num_chars // 3))  # words average more than 3 characters with a space
    return text[:num_chars]


def dapo_completions(num: int, num_chars: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """`num` references to 64 distinct texts of `num_chars` characters ending in an "Answer:" line, and solutions."""
    texts, solutions = [], []
    for i in range(64):
        answer = ANSWERS[i % len(ANSWERS)]
        texts.append(filler(num_chars - 20, rng) + f"\nAnswer: {answer}")
        solutions.append(answer if i % 2 else "7")  # half right, half wrong
    picks = [rng.randrange(64) for _ in range(num)]
    return [texts[i] for i in picks], [solutions[i] for i in picks]


def time_dapo(completions, solutions, repeats: int = 3) -> float:
    """Best completions/s over `repeats` runs of one batch call."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dapo_accuracy_reward(completions, solution=solutions)
        best = min(best, time.perf_counter() - start)
    return len(completions) / best


def boxed_completions(num: int, num_chars: int, rng: random.Random) -> tuple[list[str], list[str]]:
    pairs = [("\\frac{1}{2}", "0.5"), ("\\sqrt{12}", "2\\sqrt{3}"), ("42", "42"), ("3", "4"), ("x^2-1", "(x-1)(x+1)")]
    completions, solutions = [], []
    for _ in range(num):
        boxed, solution = rng.choice(pairs)
        completions.append(filler(num_chars, rng) + f"\nThe answer is $\\boxed{{{boxed}}}$.")
        solutions.append(solution)
    return completions, solutions


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dapo-completions", type=int, default=20000)
    parser.add_argument("--math-verify-batch", type=int, default=256)
    parser.add_argument("--math-verify-calls", type=int, default=200, help="single-completion calls for latency")
    parser.add_argument("--num-exploding", type=int, default=1, help="exploding expressions among those calls")
    parser.add_argument("--timeout", type=float, default=5.0, help="math-verify timeout per completion (s)")
    parser.add_argument("--num-workers", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(0)
    rows = []

    for num_chars in (80_000, 1_000):
        completions, solutions = dapo_completions(args.dapo_completions, num_chars, rng)
        chat = [[{"role": "assistant", "content": text}] for text in completions]
        for kind, inputs in (("str", completions), ("chat", chat)):
            per_s = time_dapo(inputs, solutions)
            ratio = f"{per_s / DAPO_TARGET_PER_S:.1f}x target"
            rows.append(("dapo_accuracy_reward", kind, num_chars, per_s, None, ratio))

    reward = get_math_verify_reward(timeout_s=args.timeout, num_workers=args.num_workers)
    reward([r"\boxed{1}"] * reward.num_workers, solution=["1"] * reward.num_workers)  # start the workers
    for num_chars in (2_000, 80_000):
        completions, solutions = boxed_completions(args.math_verify_batch, num_chars, rng)
        start = time.perf_counter()
        reward(completions, solution=solutions)
        per_s = len(completions) / (time.perf_counter() - start)
        note = f"batch of {len(completions)}, {reward.num_workers} workers"
        rows.append(("math_verify_reward", "str", num_chars, per_s, None, note))

    completions, solutions = boxed_completions(args.math_verify_calls, 2_000, rng)
    for i in range(args.num_exploding):
        index = (i + 1) * len(completions) // (args.num_exploding + 1)
        completions[index], solutions[index] = EXPLODING, "3"
    timeouts_before = reward.num_timeouts
    latencies = []
    for completion, solution in zip(completions, solutions, strict=True):
        start = time.perf_counter()
        reward([completion], solution=[solution])
        latencies.append(time.perf_counter() - start)
    reward.close()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    bounded = "yes" if latencies[-1] <= args.timeout + 1 else "NO"
    timeouts = reward.num_timeouts - timeouts_before
    note = f"{len(latencies)} calls, {timeouts} timed out; max <= timeout + 1 s: {bounded}"
    per_s = len(latencies) / sum(latencies)
    rows.append(("math_verify_reward", "1/call", 2_000, per_s, (p50, p99, latencies[-1]), note))

    print(f"math-verify timeout {args.timeout:g} s, {os.cpu_count()} CPUs")
    widths = [20, 6, 6, 13, 22, 60]
    cells = ["reward", "input", "chars", "completions/s", "p50 / p99 / max (ms)", "note"]
    print("| " + " | ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for name, kind, num_chars, per_s, latency, note in rows:
        latency_text = "" if latency is None else " / ".join(f"{1000 * t:.0f}" for t in latency)
        cells = [name, kind, f"{num_chars:,}", f"{per_s:,.0f}", latency_text, note]
        print("| " + " | ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
