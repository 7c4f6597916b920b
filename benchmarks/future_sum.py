"""Time, peak memory and exactness of `discounted_future_sum` beside the official chunked matmul and a reverse cumsum.

    python benchmarks/future_sum.py [--batch 8] [--lengths 1024 4096 16384 32768] [--repeats 5]

(a) is the official formulation (spec §4.1, written here from its description): for every block of 128 columns, an
(L, 128) decay matrix and a (B, 128) × (128, L) matmul, O(B·L²). (b) is a plain reverse `torch.cumsum` of the same
tensor, the memory-bound yardstick (it computes a different, undiscounted sum). Peak memory is the growth of the
process's peak resident memory during one call (`peak_memory.py`).
"""

import argparse
import statistics
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


METHODS = {"fipo_trl": discounted_future_sum, "official (a)": official_chunked_matmul, "cumsum (b)": reverse_cumsum}


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


def timed(fn, x, repeats):
    """(median milliseconds over `repeats` calls after one warm-up call, last output)."""
    out = fn(x, GAMMA)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(x, GAMMA)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    ensure_exact_peaks()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={args.batch}, fp32, γ=2^(-1/32)")
    header = (
        f"{'T':>6} | {'fipo_trl ms':>11} {'(a) ms':>9} {'(b) ms':>8} | {'(a)/ours':>8} {'ours/(b)':>8} | "
        f"{'ours MiB':>8} {'(a) MiB':>8} {'(b) MiB':>8} | {'ours rel err':>12} {'(a) rel err':>11}"
    )
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        x = make_input(args.batch, length)
        ref = reference(x, GAMMA)
        scale = ref.abs().max().item()
        # the official form takes seconds per call at long T: time it once, after its warm-up call
        runs = {name: timed(fn, x, args.repeats if name != "official (a)" else 1) for name, fn in METHODS.items()}
        ms = {name: run[0] for name, run in runs.items()}
        err = {name: (runs[name][1].double() - ref).abs().max().item() / scale for name in list(METHODS)[:2]}
        mem = {name: peak_mib(fn, x) for name, fn in METHODS.items()}
        print(
            f"{length:>6} | {ms['fipo_trl']:>11.2f} {ms['official (a)']:>9.1f} {ms['cumsum (b)']:>8.2f} | "
            f"{ms['official (a)'] / ms['fipo_trl']:>7.1f}x {ms['fipo_trl'] / ms['cumsum (b)']:>7.2f}x | "
            f"{mem['fipo_trl']:>8.1f} {mem['official (a)']:>8.1f} {mem['cumsum (b)']:>8.1f} | "
            f"{err['fipo_trl']:>12.2e} {err['official (a)']:>11.2e}"
        )


if __name__ == "__main__":
    main()
