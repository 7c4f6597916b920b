"""`fipo-trl train` or `eval` speed on CPU with 1 vs 2 torch (OpenMP) threads, optionally beside busy processes.

    python benchmarks/cpu_threads.py [--threads 1 2] [--repeats 3] [--max_steps 40] [--busy 2]
    python benchmarks/cpu_threads.py --command eval [--threads 1 2] [--repeats 3] [--max_tokens 64]

`train`: each run is the README's command 1 (`fipo-trl train configs/quickstart.yaml`) cut to `--max_steps` steps,
without the held-out checks, the token view or wandb; the speed is TRL's `train_steps_per_second` (the training loop
only, model loading excluded). `eval`: each run is `fipo-trl eval --dataset synthetic` (256 problems, one sample
each, `--max_tokens` tokens) of a randomly initialised 24M-parameter Qwen2 (hidden 512, 8 layers, the quickstart's
tokenizer, built once), whose completions rarely end early, so every run generates about the same tokens; the
speed is problems per second of the whole command (start, load, generation, scoring).

Every run is a fresh process with `OMP_NUM_THREADS` set to the thread count. Runs alternate between the thread
counts (1, 2, 1, 2, …) so that a change in the machine's load hits all of them alike. `--busy N` starts N
pure-Python busy loops for the whole benchmark (and stops them at the end): a CPU that other jobs keep busy.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_SECOND = re.compile(r"'train_steps_per_second': '?([0-9.]+)")
EVAL_PROBLEMS = 256  # `--dataset synthetic`: the quickstart's held-out additions


def run(threads, command):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU measurement on a machine with a GPU too
    result = subprocess.run([sys.executable, "-m", "fipo_trl", *command], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"run with {threads} threads failed:\n{result.stderr[-3000:]}")
    return result


def steps_per_second(threads, max_steps, output_dir):
    command = ["train", str(ROOT / "configs" / "quickstart.yaml"), "--max_steps", str(max_steps)]
    command += ["--heldout_size", "0", "--token_view", "false", "--report_to", "none"]
    command += ["--save_steps", str(max_steps + 1), "--output_dir", str(output_dir)]
    result = run(threads, command)
    return float(STEPS_PER_SECOND.findall(result.stdout + result.stderr)[-1])


def build_eval_model(path):
    """A random 24M-parameter Qwen2 with the quickstart's tokenizer, saved to `path`."""
    from transformers import AutoTokenizer

    from fipo_trl.testing import tiny_model

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "fipo_trl" / "assets" / "tiny-qwen2-addition")
    model = tiny_model.build_model(
        tokenizer, 0, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        max_position_embeddings=256,
    )  # fmt: skip
    return tiny_model.save_tiny_model(path, tokenizer, model)


def problems_per_second(threads, model, max_tokens, output_dir):
    command = ["eval", "--model_name_or_path", model, "--dataset", "synthetic", "--k", "1"]
    command += ["--max_tokens", str(max_tokens), "--batch_size", "64", "--output_dir", str(output_dir)]
    start = time.monotonic()
    run(threads, command)
    return EVAL_PROBLEMS / (time.monotonic() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", choices=["train", "eval"], default="train")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--max_tokens", type=int, default=64, help="eval: tokens per completion")
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes to run alongside")
    args = parser.parse_args()
    unit = "steps/s" if args.command == "train" else "problems/s"

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    speeds = {threads: [] for threads in args.threads}
    loads = [os.getloadavg()[0]]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = build_eval_model(Path(tmp) / "model") if args.command == "eval" else None
            for repeat in range(args.repeats):
                for threads in args.threads:
                    output_dir = Path(tmp) / f"{threads}-{repeat}"
                    if args.command == "train":
                        speed = steps_per_second(threads, args.max_steps, output_dir)
                    else:
                        speed = problems_per_second(threads, model, args.max_tokens, output_dir)
                    speeds[threads].append(speed)
                    loads.append(os.getloadavg()[0])
                    print(
                        f"threads={threads} run={repeat} {speed:.3f} {unit} (1-min load {loads[-1]:.2f})", flush=True
                    )
    finally:
        for process in busy:
            process.kill()
            process.wait()

    size = f"{args.max_steps} steps" if args.command == "train" else f"{EVAL_PROBLEMS} x {args.max_tokens} tokens"
    print(
        f"\nfipo-trl {args.command}: {os.cpu_count()} CPUs, {args.busy} busy loops added, 1-min load during the runs "
        f"{min(loads):.1f}-{max(loads):.1f}; {size} per run, {args.repeats} runs per thread count, alternating"
    )
    for threads, values in speeds.items():
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(f"OMP_NUM_THREADS={threads}: median {statistics.median(values):.2f} {unit}  (runs: {spread})")


if __name__ == "__main__":
    main()
