"""
GPU check of fipo_trl, one short run (< 8 min on one H100) that prints two tables:

1. `discounted_future_sum` at B = 8 and T in {4k, 20k, 64k}, float32 and bfloat16: time, peak extra memory, and the
   error against a float64 reverse recurrence on the same (rounded) inputs.
2. A few optimizer steps of FIPOTrainer against GRPOTrainer(loss_type="dapo", delta=10) on a randomly initialised
   Qwen2 with Qwen2.5-0.5B's shapes, 4096-token completions, bf16: median step time and peak memory, with ratios.
   Completions come from a `rollout_func` that samples random tokens (no generation cost, no vLLM, no hub), so the
   two runs differ only in the loss. Both use the same off-policy geometry (2 optimizer steps per generation).

    python benchmarks/gpu_check.py              # on a GPU
    python benchmarks/gpu_check.py --dry-run    # tiny sizes on CPU: checks that everything runs
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers >= 5.2x loads hub kernels by default on CUDA; offline, with none cached, from_pretrained fails
os.environ.setdefault("USE_HUB_KERNELS", "0")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is flagged experimental in TRL 1.16

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from fipo_trl import FIPOConfig, FIPOTrainer, discounted_future_sum  # noqa: E402
from fipo_trl.testing import tiny_model  # noqa: E402


GAMMA = 2 ** (-1 / 32)  # FIPO's discount at the official τ = 32
MIB = 1024**2
FULL = {
    "batch": 8,
    "lengths": (4096, 20480, 65536),
    "repeats": 10,
    "model": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14},
    "vocab_size": 151936,
    "completion_length": 4096,
    "prompt_length": 128,
    "max_steps": 6,
}
DRY = {
    "batch": 2,
    "lengths": (64, 300),
    "repeats": 2,
    "model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    "vocab_size": 512,
    "completion_length": 16,
    "prompt_length": 8,
    "max_steps": 4,
}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_future_sum(x):
    """F_t = x_t + γ F_{t+1} in float64 on the CPU, one step at a time: independent of the blocked scan."""
    x = x.double().cpu()
    out = torch.empty_like(x)
    carry = torch.zeros(x.shape[0], dtype=torch.float64)
    for t in range(x.shape[1] - 1, -1, -1):
        carry = x[:, t] + GAMMA * carry
        out[:, t] = carry
    return out


def bench_future_sum(sizes, device):
    rows = []
    for length in sizes["lengths"]:
        for dtype in (torch.float32, torch.bfloat16):
            generator = torch.Generator().manual_seed(length)
            # Log-ratio-like inputs: small, both signs, with masked (zero) positions, as FIPO feeds them
            x = torch.randn(sizes["batch"], length, generator=generator) * 0.05
            x[torch.rand(sizes["batch"], length, generator=generator) < 0.1] = 0.0
            x = x.to(device=device, dtype=dtype)
            discounted_future_sum(x, GAMMA)  # warm-up: kernels, allocator
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            times = []
            for _ in range(sizes["repeats"]):
                start = time.perf_counter()
                out = discounted_future_sum(x, GAMMA)
                synchronize(device)
                times.append(time.perf_counter() - start)
            peak = (torch.cuda.max_memory_allocated(device) - base) / MIB if device.type == "cuda" else float("nan")
            reference = reference_future_sum(x)
            error = (out.double().cpu() - reference).abs()
            rows.append(
                {
                    "T": length,
                    "dtype": str(dtype).removeprefix("torch."),
                    "ms": 1000 * statistics.median(times),
                    "peak MiB": peak,
                    "max abs err": error.max().item(),
                    "max rel err": (error.max() / reference.abs().max()).item(),
                }
            )
    return rows


def build_model(path, sizes, dtype):
    """A randomly initialised Qwen2 and a character tokenizer over every byte (`fipo_trl.testing.tiny_model`)."""
    tokenizer = tiny_model.build_tokenizer(None, model_max_length=32768)
    model = tiny_model.build_model(
        tokenizer,
        seed=0,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        vocab_size=sizes["vocab_size"],  # Qwen2.5's: the logits cost what a real model's do
        **sizes["model"],
    ).to(dtype)
    tiny_model.save_tiny_model(path, tokenizer, model)
    return sum(p.numel() for p in model.parameters())


def random_rollout(sizes):
    """A `rollout_func` returning fixed-length random completions (no EOS), so every step sees full-length rows."""
    generator = torch.Generator().manual_seed(1)

    def rollout(prompts, trainer):
        # byte tokens only: never EOS or pad, so every completion runs to the full length, and every id decodes
        low, high = len(tiny_model.SPECIAL_TOKENS), len(trainer.processing_class)
        prompt_ids = torch.randint(low, high, (len(prompts), sizes["prompt_length"]), generator=generator)
        completion_ids = torch.randint(low, high, (len(prompts), sizes["completion_length"]), generator=generator)
        return {"prompt_ids": prompt_ids.tolist(), "completion_ids": completion_ids.tolist(), "logprobs": None}

    return rollout


def reward_first_tokens(completions, **kwargs):
    """Varies within a group, so that advantages (and the loss) are non-zero."""
    return [float(sum(map(ord, completion[:64])) % 7) for completion in completions]


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, the device synchronised at both ends."""

    def __init__(self, device):
        self.device, self.times, self.start = device, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.times.append(time.perf_counter() - self.start)


def bench_trainer(name, model_dir, sizes, device, output_dir):
    common = {
        "output_dir": output_dir,
        "per_device_train_batch_size": 2,
        "num_generations": 2,
        "gradient_accumulation_steps": 2,
        "steps_per_generation": 4,  # 2 optimizer steps per generation batch: the second one is off-policy
        "max_completion_length": sizes["completion_length"],
        "max_steps": sizes["max_steps"],
        "learning_rate": 1e-6,
        "epsilon_high": 0.28,
        "beta": 0.0,
        "bf16": device.type == "cuda",
        "gradient_checkpointing": True,
        "use_cpu": device.type != "cuda",
        "model_init_kwargs": {"dtype": torch.bfloat16 if device.type == "cuda" else torch.float32},
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
    }
    if name == "FIPO":
        trainer_cls, args = FIPOTrainer, FIPOConfig(**common)
    else:
        trainer_cls, args = GRPOTrainer, GRPOConfig(**common, loss_type="dapo", delta=10.0)
    dataset = Dataset.from_dict({"prompt": [f"t{i} t{i + 1}" for i in range(64)]})
    timer = StepTimer(device)
    trainer = trainer_cls(
        model_dir,
        reward_funcs=reward_first_tokens,
        args=args,
        train_dataset=dataset,
        rollout_func=random_rollout(sizes),
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # the table is the output; per-step log dicts would bury it
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer.train()
    peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else float("nan")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # The first step includes the rollout and the old-log-prob pass of the generation batch: report the rest
    steady = timer.times[1:] or timer.times
    return {"trainer": name, "step s": statistics.median(steady), "peak MiB": peak, "final loss": losses[-1]}


def print_table(title, rows):
    columns = list(rows[0])
    cells = [[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, to check that the script runs")
    options = parser.parse_args(argv)
    sizes = DRY if options.dry_run else FULL
    if not options.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --dry-run to exercise the script on CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu") if options.dry_run else torch.device("cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"fipo_trl GPU check on {name}, torch {torch.__version__}")
    warnings.filterwarnings("ignore")

    start = time.perf_counter()
    print_table(f"discounted_future_sum, B={sizes['batch']}, γ=2^(-1/32)", bench_future_sum(sizes, device))
    print(f"(future sums: {time.perf_counter() - start:.0f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        num_params = build_model(model_dir, sizes, dtype)
        rows = [bench_trainer(n, model_dir, sizes, device, os.path.join(tmp, n)) for n in ("GRPO-dapo", "FIPO")]
    baseline = rows[0]
    for row in rows:
        row["time ×"] = row["step s"] / baseline["step s"]
        row["memory ×"] = row["peak MiB"] / baseline["peak MiB"] if device.type == "cuda" else float("nan")
    title = (
        f"{sizes['max_steps']} optimizer steps, random Qwen2 of {num_params:,} parameters, "
        f"{sizes['completion_length']}-token completions, 4 per step, {dtype}"
    )
    print_table(title, rows)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
