"""Time, peak memory and exactness of `discounted_future_sum` beside the official chunked matmul and a reverse cumsum.

    python benchmarks/future_sum.py [--batch 8] [--lengths 1024 4096 16384 32768] [--repeats 30] [--threads N]

(a) is the official formulation (docs/fipo.md §4.1, written here from its description): for every block of 128
columns, an (L, 128) decay matrix and a (B, 128) × (128, L) matmul, O(B·L²). (b) is a plain reverse `torch.cumsum`
of the same tensor, the memory-bound yardstick (it computes a different, undiscounted sum).

The methods are timed alternately in one loop: every repetition calls each of them once, in an order that rotates
from one repetition to the next, so that a change of machine load or clock hits all of them alike. A ratio is the
median of the per-repetition ratios, with the range of its middle half; times are medians with the same spread. The
official form takes seconds per call at long T, so it joins only the first `--official-repeats` repetitions, and
its ratio is one of medians.

Peak memory is the growth of the peak resident memory during one call (`peak_memory.py`), measured in a child
process: exact peaks need glibc to map and unmap every allocation over 64 KiB, which makes each fresh tensor
page-fault and would slow the memory-bound methods several-fold if the timings ran under it too.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from peak_memory import ensure_exact_peaks, peak_growth

from fipo_trl import discounted_future_sum


GAMMA = 2 ** (-1 / 32)  # official τ = 32


def official_chunked_matmul(x, gamma, chunk=128):
    length = x.shape[-1]
    rows = torch.arange(length, dtype=x.dtype)
    out = torch.zeros_like(x)
    for start in range(0, length, chunk):
        cols = torch.arange(start, min(start + chunk, length), dtype=x.dtype)
        distance = cols[None, :] - rows[:, None]  # (L, K): j − i
        decay = torch.where(distance >= 0, gamma ** distance.clamp(min=0), torch.zeros(()))
        out += x[:, start : start + chunk] @ decay.T
    return out


def reverse_cumsum(x, gamma):
    return x.flip(-1).cumsum(-1).flip(-1)


METHODS = {"ours": discounted_future_sum, "official": official_chunked_matmul, "cumsum": reverse_cumsum}


def reference(x, gamma):
    out = torch.empty_like(x, dtype=torch.float64)
    carry = torch.zeros(x.shape[0], dtype=torch.float64)
    x = x.double()
    for t in reversed(range(x.shape[-1])):
        carry = x[:, t] + gamma * carry
        out[:, t] = carry
    return out


def make_input(batch, length):
    return torch.randn(batch, length, generator=torch.Generator().manual_seed(length))


def peak_mib(fn, x):
    with peak_growth() as peak:
        fn(x, GAMMA)
    return peak["mib"]


def quartiles(values):
    """(median, first quartile, third quartile) of a list of floats."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q1, q3


def interleaved_times(x, repeats, official_repeats):
    """Milliseconds of every call, per method, with the methods called alternately in one loop."""
    names = list(METHODS)
    for fn in METHODS.values():  # one warm-up call each: allocator, thread pool, lazy initialisation
        fn(x, GAMMA)
    times = {name: [] for name in names}
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            if name == "official" and rep >= official_repeats:
                continue
            start = time.perf_counter()
            METHODS[name](x, GAMMA)
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def peak_memory_in_child(batch, lengths):
    """{length: {method: MiB}} from a child process that runs with exact peaks (see the module docstring)."""
    command = [sys.executable, __file__, "--batch", str(batch), "--lengths", *map(str, lengths), "--peak-memory-json"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return {int(length): mib for length, mib in json.loads(result.stdout).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--repeats", type=int, default=30, help="repetitions of the interleaved loop per length")
    parser.add_argument("--official-repeats", type=int, default=3, help="repetitions that include the official form")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--peak-memory-json", action="store_true", help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.repeats < 1 or not 1 <= args.official_repeats <= args.repeats:
        parser.error("--repeats must be >= 1 and --official-repeats between 1 and --repeats")
    if args.peak_memory_json:
        ensure_exact_peaks()
        for fn in METHODS.values():  # one-time allocations (decay matrices, thread pools) are not a call's peak
            fn(make_input(args.batch, min(args.lengths)), GAMMA)
        mem = {
            length: {name: peak_mib(fn, make_input(args.batch, length)) for name, fn in METHODS.items()}
            for length in args.lengths
        }
        print(json.dumps(mem))
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load}; "
        f"B={args.batch}, fp32, γ=2^(-1/32); {args.repeats} interleaved repetitions "
        f"({args.official_repeats} with the official form); median [first–third quartile]"
    )
    header = (
        f"{'T':>6} | {'ours ms':>20} {'cumsum ms':>20} {'official ms':>12} | {'ours/cumsum':>19} "
        f"{'official/ours':>13} | {'ours MiB':>8} {'off. MiB':>8} {'cums MiB':>8} | {'ours err':>8} {'off. err':>8}"
    )
    print(header)
    print("-" * len(header))
    peak_memory = peak_memory_in_child(args.batch, args.lengths)
    for length in args.lengths:
        x = make_input(args.batch, length)
        times = interleaved_times(x, args.repeats, args.official_repeats)
        # ratios of calls made in the same repetition, a few microseconds apart
        vs_cumsum = [ours / cumsum for ours, cumsum in zip(times["ours"], times["cumsum"], strict=True)]
        ref = reference(x, GAMMA)
        scale = ref.abs().max().item()
        err = {
            name: (METHODS[name](x, GAMMA).double() - ref).abs().max().item() / scale for name in ("ours", "official")
        }
        mem = peak_memory[length]

        def spread(values, digits):
            median, q1, q3 = quartiles(values)
            return f"{median:.{digits}f} [{q1:.{digits}f}–{q3:.{digits}f}]"

        print(
            f"{length:>6} | {spread(times['ours'], 3):>20} {spread(times['cumsum'], 3):>20} "
            f"{quartiles(times['official'])[0]:>12.1f} | {spread(vs_cumsum, 2) + 'x':>19} "
            f"{quartiles(times['official'])[0] / quartiles(times['ours'])[0]:>12.0f}x | "
            f"{mem['ours']:>8.1f} {mem['official']:>8.1f} {mem['cumsum']:>8.1f} | "
            f"{err['ours']:>8.1e} {err['official']:>8.1e}"
        )


if __name__ == "__main__":
    main()
