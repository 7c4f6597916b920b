"""Quickstart training speed with 1 vs 2 torch (OpenMP) threads, optionally with extra busy processes on the CPU.

    python benchmarks/cpu_threads.py [--threads 1 2] [--repeats 3] [--max_steps 40] [--busy 2]

Each run is the README's command 1 (`fipo-trl train configs/quickstart.yaml`) cut to `--max_steps` steps, without
the held-out checks, the token view or wandb, in a fresh process with `OMP_NUM_THREADS` set to the thread count.
Runs alternate between the thread counts (1, 2, 1, 2, …) so that a change in the machine's load hits all of them
alike. `--busy N` starts N pure-Python busy loops for the whole benchmark (and stops them at the end): a CPU that
other jobs keep busy. The speed is TRL's `train_steps_per_second` (the training loop only, model loading excluded).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_SECOND = re.compile(r"'train_steps_per_second': '?([0-9.]+)")


def steps_per_second(threads, max_steps, output_dir):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "fipo_trl", "train", str(ROOT / "configs" / "quickstart.yaml")]
    command += ["--max_steps", str(max_steps), "--heldout_size", "0", "--token_view", "false", "--report_to", "none"]
    command += ["--save_steps", str(max_steps + 1), "--output_dir", str(output_dir)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    found = STEPS_PER_SECOND.findall(result.stdout + result.stderr)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"run with {threads} threads failed:\n{result.stderr[-3000:]}")
    return float(found[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes to run alongside")
    args = parser.parse_args()

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    speeds = {threads: [] for threads in args.threads}
    loads = [os.getloadavg()[0]]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for repeat in range(args.repeats):
                for threads in args.threads:
                    speed = steps_per_second(threads, args.max_steps, Path(tmp) / f"{threads}-{repeat}")
                    speeds[threads].append(speed)
                    loads.append(os.getloadavg()[0])
                    print(
                        f"threads={threads} run={repeat} {speed:.3f} steps/s (1-min load {loads[-1]:.2f})", flush=True
                    )
    finally:
        for process in busy:
            process.kill()
            process.wait()

    print(
        f"\n{os.cpu_count()} CPUs, {args.busy} busy loops added, 1-min load during the runs {min(loads):.1f}-"
        f"{max(loads):.1f}; {args.max_steps} steps per run, {args.repeats} runs per thread count, alternating"
    )
    for threads, values in speeds.items():
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(f"OMP_NUM_THREADS={threads}: median {statistics.median(values):.2f} steps/s  (runs: {spread})")


if __name__ == "__main__":
    main()
