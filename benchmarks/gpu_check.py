"""
GPU check of fipo_trl: one run of at most 8 minutes on one lent GPU, every part in its own time-boxed process, so
that an out-of-memory error or a hang ends that part only. It prints, and writes to `benchmarks/results/gpu_check/`:

0. what the machine has: torch, CUDA, vLLM, DeepSpeed, flash-attn, transformers, TRL, accelerate (or "absent");
1. long completions (8k, 16k, 20k tokens) on random models shaped like Qwen2.5-1.5B and -7B (the published shapes in
   `fipo_trl/memory_estimate.py`), fp32 weights, bf16 autocast, gradient checkpointing, 1 process: FIPO and DAPO
   step times, and the measured peak (`torch.cuda.max_memory_allocated`) beside `fipo-trl check`'s estimate for the
   same geometry. A size whose estimate exceeds the GPU is skipped with the estimate printed, not run;
2. FIPO and DAPO under DeepSpeed ZeRO-3 and under FSDP2, 1 process each, launched as a user would:
   `accelerate launch --config_file configs/accelerate/{zero3,fsdp2}.yaml --num_processes 1`, with the engine each
   run really got (DeepSpeedEngine stage, FSDP2 module) read back from the trainer;
3. vLLM colocate mode (1 process under `accelerate launch`, real generation), if vLLM is installed;
4. `discounted_future_sum` at B = 8 and T in {4k, 20k, 64k}, float32 and bfloat16, against a float64 recurrence.

Completions in parts 1-2 come from a `rollout_func` of random full-length tokens, so FIPO and DAPO
(`GRPOTrainer(loss_type="dapo", delta=10)`) differ only in the loss; 2 optimizer steps per generation batch, the
second off-policy.

    bash benchmarks/gpu_check.sh               # on the GPU machine
    python benchmarks/gpu_check.py --dry-run   # tiny sizes on CPU: every part's code path, CUDA-only ones skipped
"""

import argparse
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers >= 5.2x loads hub kernels by default on CUDA; offline, with none cached, from_pretrained fails
os.environ.setdefault("USE_HUB_KERNELS", "0")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is flagged experimental in TRL 1.16
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # fipo_trl from this tree, installed or not (a GPU machine has no package index)
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULT = "GPU_CHECK_RESULT "  # a part's one result line on stdout
BUDGET_S = 460  # the whole run, inside gpu_check.sh's 470 s hard stop and the 8-minute reservation
MIB = 1024**2

SMALL = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 8}
FULL = {
    "long": {"models": ("1.5b", "7b"), "lengths": (8192, 16384, 20480), "prompt_length": 256, "max_steps": 2},
    "engine": {"model": {**SMALL, "vocab_size": 151936}, "completion_length": 2048, "max_steps": 4},
    "vllm": {"model": SMALL, "completion_length": 256, "max_steps": 2},
    "future_sum": {"batch": 8, "lengths": (4096, 20480, 65536), "repeats": 10},
    # seconds per part on an H100; a part not started within the budget left is reported as skipped
    "time_box": {"long 1.5b": 150, "zero3": 80, "fsdp2": 80, "vllm": 110, "long 7b": 100, "future_sum": 30},
}
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
DRY = {
    # tiny stand-ins with each model's layout (GQA, tied or not), lengths scaled by 1/32: the code path, not the size
    "long": {"models": ("1.5b", "7b"), "lengths": (256, 512, 640), "prompt_length": 8, "max_steps": 2},
    "shapes": {
        "1.5b": {**TINY, "hidden_size": 128, "intermediate_size": 448, "num_key_value_heads": 2, "tied": True},
        "7b": {**TINY, "hidden_size": 192, "intermediate_size": 1024, "num_key_value_heads": 2, "tied": False},
    },
    "vocab_size": 4096,
    "engine": {"model": {**TINY, "vocab_size": 512}, "completion_length": 16, "max_steps": 2},
    "vllm": {"model": {**TINY, "vocab_size": 512}, "completion_length": 16, "max_steps": 2},
    "future_sum": {"batch": 2, "lengths": (64, 300), "repeats": 2},
    "time_box": {"long 1.5b": 240, "zero3": 150, "fsdp2": 150, "vllm": 150, "long 7b": 240, "future_sum": 60},
}


def versions():
    """`{package: version or "absent"}` for what a GPU run depends on, and torch's CUDA build."""
    found = {}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "vllm", "flash-attn"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    import torch

    found["CUDA (torch build)"] = torch.version.cuda or "absent"
    found["GPU"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return found


def run_part(name, command, box, dry_run):
    """Run one part's process for at most `box` s; its result dict, or a status saying why there is none."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # CPU peaks: see benchmarks/peak_memory.py
    if dry_run:
        env["DS_ACCELERATOR"] = "cpu"
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=box)
        late = None
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # accelerate launch's children too
        output, _ = process.communicate()
        late = {"status": f"timed out after {box} s (the rows finished before)"}
    wall = time.perf_counter() - start
    lines = [line[len(RESULT) :] for line in output.splitlines() if line.startswith(RESULT)]
    if lines:  # the last result line: a part that times out keeps the rows it printed
        return {"part": name, "wall s": wall, **json.loads(lines[-1]), **(late or {})}
    if late:
        return {"part": name, "wall s": wall, **late}
    out_of_memory = "OutOfMemoryError" in output or "out of memory" in output
    last = [line for line in output.splitlines() if line.strip()][-3:]
    status = "out of memory" if out_of_memory else f"failed (exit {process.returncode}): {' | '.join(last)[-400:]}"
    return {"part": name, "status": status, "wall s": wall}


def part_commands(options):
    """`[(name, command)]` in the order they run: the most informative first."""
    python, script = sys.executable, str(Path(__file__).resolve())
    flags = ["--dry-run"] if options.dry_run else []
    launch = [python, "-m", "accelerate.commands.launch", "--num_processes", "1"]
    if options.dry_run:
        launch += ["--mixed_precision", "no"]  # bf16 needs a GPU
    commands = [("long 1.5b", [python, script, "--part", "long", "--model", "1.5b", *flags])]
    for engine in ("zero3", "fsdp2"):
        config = ["--config_file", f"configs/accelerate/{engine}.yaml"]
        commands.append((engine, [*launch, *config, script, "--part", "engine", "--engine", engine, *flags]))
    config = ["--config_file", "configs/accelerate/single_gpu.yaml"]
    commands.append(("vllm", [*launch, *config, script, "--part", "vllm", *flags]))
    commands.append(("long 7b", [python, script, "--part", "long", "--model", "7b", *flags]))
    commands.append(("future_sum", [python, script, "--part", "future_sum", *flags]))
    return commands


def orchestrate(options):
    sizes = DRY if options.dry_run else FULL
    start, results = time.perf_counter(), []
    found = versions()
    print("fipo_trl GPU check" + (" (dry run: tiny sizes on CPU)" if options.dry_run else ""))
    print("\n".join(f"  {name}: {version}" for name, version in found.items()), flush=True)
    for name, command in part_commands(options):
        left = BUDGET_S - (time.perf_counter() - start)
        box = sizes["time_box"][name]
        if not options.dry_run and left < min(box, 30):
            result = {"part": name, "status": f"skipped: {left:.0f} s left of the {BUDGET_S} s budget"}
        else:
            result = run_part(name, command, box if options.dry_run else min(box, int(left)), options.dry_run)
        results.append(result)
        print_result(result)
    total = time.perf_counter() - start
    print(f"\ntotal {total:.0f} s")
    write_results(options, found, results, total)
    return 0


def print_result(result):
    print(f"\n[{result['part']}] {result.get('status', 'ran')} ({result.get('wall s', 0):.0f} s)")
    for row in result.get("rows", []):
        print(
            "  "
            + ", ".join(
                f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in row.items()
            )
        )
    sys.stdout.flush()


def write_results(options, found, results, total):
    """`<results>/<gpu or dry_run_cpu>.json`: the versions, each part's result and the total wall time."""
    folder = Path(options.results)
    folder.mkdir(parents=True, exist_ok=True)
    name = "dry_run_cpu" if options.dry_run else found["GPU"].lower().replace(" ", "_")
    record = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "versions": found}
    record |= {"parts": results, "total s": total}
    (folder / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"results: {folder / name}.json")


# ---- the parts, each run in its own process ----

GAMMA = 2 ** (-1 / 32)  # FIPO's discount at the official τ = 32


def part_config(options, sizes):
    """The model of a part as a config mapping: a Qwen2.5 size's published shape, or a tiny stand-in."""
    from fipo_trl.memory_estimate import model_shape

    if options.part != "long":
        return {**sizes[options.part]["model"], "num_key_value_heads": 2, "tie_word_embeddings": True}
    if options.dry_run:
        shape = dict(DRY["shapes"][options.model])
        vocab = options.vocab_size or DRY["vocab_size"]
        return {**shape, "tie_word_embeddings": shape.pop("tied"), "vocab_size": vocab}
    return model_shape(f"Qwen2.5-{options.model}")[0]


def build_model(config, tokenizer, device, dtype):
    """A randomly initialised Qwen2 of `config`'s shape, built on `device` (no CPU copy of a 7B model)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fields = {key: value for key, value in config.items() if key != "model_type"}
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    qwen2 = Qwen2Config(**fields, **ids, max_position_embeddings=32768, rope_theta=1_000_000.0)
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(qwen2).to(dtype)


def random_rollout(prompt_length, completion_length):
    """A `rollout_func` of fixed-length random byte tokens (never EOS or pad): every row runs to full length."""
    import torch

    from fipo_trl.testing import tiny_model

    generator = torch.Generator().manual_seed(1)

    def rollout(prompts, trainer):
        low, high = len(tiny_model.SPECIAL_TOKENS), len(trainer.processing_class)
        prompt_ids = torch.randint(low, high, (len(prompts), prompt_length), generator=generator)
        completion_ids = torch.randint(low, high, (len(prompts), completion_length), generator=generator)
        return {"prompt_ids": prompt_ids.tolist(), "completion_ids": completion_ids.tolist(), "logprobs": None}

    return rollout


def reward_first_tokens(completions, **kwargs):
    """Varies within a group, so that advantages (and the loss) are non-zero."""
    return [float(sum(map(ord, completion[:64])) % 7) for completion in completions]


def training_args(name, output_dir, completion_length, max_steps, cuda, **extra):
    """FIPOConfig or GRPOConfig(loss_type="dapo", delta=10): 2 completions per micro-step, 2 steps per generation."""
    from trl import GRPOConfig

    from fipo_trl import FIPOConfig

    common = {
        "output_dir": output_dir,
        "per_device_train_batch_size": 2,
        "num_generations": 2,
        "gradient_accumulation_steps": 2,
        "steps_per_generation": 4,  # 2 optimizer steps per generation batch: the second one is off-policy
        "max_completion_length": completion_length,
        "max_steps": max_steps,
        "learning_rate": 1e-6,
        "epsilon_high": 0.28,
        "beta": 0.0,
        "bf16": cuda,
        "gradient_checkpointing": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
        **extra,
    }
    return FIPOConfig(**common) if name == "FIPO" else GRPOConfig(**common, loss_type="dapo", delta=10.0)


def engine_of(trainer):
    """What the trainer really trains under, read from the wrapped model."""
    from torch.distributed.fsdp import FSDPModule

    wrapped = trainer.model_wrapped
    if type(wrapped).__name__ == "DeepSpeedEngine":
        return f"DeepSpeedEngine, ZeRO stage {wrapped.zero_optimization_stage()}"
    if any(isinstance(module, FSDPModule) for module in trainer.model.modules()):
        return "FSDP2 (fully_shard)"
    return f"{type(wrapped).__name__}, not sharded (accelerate: {trainer.accelerator.distributed_type})"


def train_once(name, model, tokenizer, args, rollout=None, **kwargs):
    """Train one run; its median step time (after the first), peak memory (MiB), final loss and engine."""
    import statistics

    import torch
    from datasets import Dataset
    from peak_memory import peak_growth
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer

    from fipo_trl import FIPOTrainer

    cuda = torch.cuda.is_available()
    times = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize() if cuda else None
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize() if cuda else None
            times.append(time.perf_counter() - self.start)

    dataset = Dataset.from_dict({"prompt": [f"t{i} t{i + 1}" for i in range(64)]})
    trainer = (FIPOTrainer if name == "FIPO" else GRPOTrainer)(
        model,
        reward_funcs=reward_first_tokens,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollout,
        callbacks=[StepTimer()],
        **kwargs,
    )
    trainer.remove_callback(PrinterCallback)
    weights = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with peak_growth() as growth:
        trainer.train()
    # CUDA: every live tensor at the high-water mark; CPU: the resident growth over train() plus the weights before it
    peak = torch.cuda.max_memory_allocated() / MIB if cuda else growth["mib"] + weights / MIB
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    row = {"step s": statistics.median(times[1:] or times), "peak MiB": peak, "loss": losses[-1]}
    row["engine"] = engine_of(trainer)
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return row


def estimate(config, sharding, prompt_length, completion_length, activation_bytes, weight_bytes, cuda):
    """`fipo-trl check`'s micro-step peak (MiB) for the part's geometry: 2 sequences, 1 process."""
    from fipo_trl.memory_estimate import MicroStep, micro_step_memory

    step = MicroStep(2, prompt_length, completion_length, True, activation_bytes, weight_bytes, triton=cuda)
    return micro_step_memory(config, sharding, 1, step)[1] / MIB


def part_long(options, sizes):
    """FIPO and DAPO at each completion length on one model, fp32 weights + bf16 autocast, with peak vs estimate."""
    import tempfile

    import torch

    from fipo_trl.memory_estimate import CUDA_OVERHEAD, Sharding, usable_memory
    from fipo_trl.testing import tiny_model

    if options.dry_run:
        from peak_memory import ensure_exact_peaks

        ensure_exact_peaks()
    cuda, config, long = torch.cuda.is_available(), part_config(options, sizes), dict(sizes["long"])
    if options.lengths:
        long["lengths"] = tuple(int(length) for length in options.lengths.split(","))
    device = "cuda" if cuda else "cpu"
    usable = usable_memory(torch.cuda.get_device_properties(0).total_memory) / MIB if cuda else float("inf")
    tokenizer = tiny_model.build_tokenizer(None, model_max_length=32768)
    half = 2 if cuda else 4  # bf16 autocast on the GPU, fp32 on the CPU
    rows, model = [], None
    for length in long["lengths"]:
        expected = estimate(config, Sharding("single", 0), long["prompt_length"], length, half, 4, cuda)
        row = {"T": length, "estimate MiB": expected}
        if expected > usable:
            rows.append({**row, "status": f"skipped: estimate {expected / 1024:.1f} GiB > {usable / 1024:.1f} usable"})
            continue
        if model is None:
            model = build_model(config, tokenizer, device, torch.float32)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for name in ("FIPO", "DAPO"):
                    args = training_args(name, tmp, length, long["max_steps"], cuda, use_cpu=not cuda)
                    run = train_once(name, model, tokenizer, args, random_rollout(long["prompt_length"], length))
                    row |= {f"{name} step s": run["step s"], f"{name} peak MiB": run["peak MiB"]}
            row["FIPO/DAPO time"] = row["FIPO step s"] / row["DAPO step s"]
            row["peak/estimate"] = row["FIPO peak MiB"] / expected
        except torch.OutOfMemoryError as error:
            row["status"] = f"out of memory: {str(error)[:120]}"
            torch.cuda.empty_cache()
        rows.append(row)
        print(RESULT + json.dumps({"rows": rows}), flush=True)  # kept if a later length runs out of time
    params = sum(p.numel() for p in model.parameters()) if model is not None else None
    return {
        "model": f"random Qwen2.5-{options.model} shape",
        "parameters": params,
        "rows": rows,
        "cuda overhead not in estimate MiB": CUDA_OVERHEAD / MIB,
    }


def part_engine(options, sizes):
    """FIPO and DAPO under the accelerate config this process was launched with (ZeRO-3 or FSDP2), 1 process."""
    import tempfile

    import torch

    from fipo_trl.memory_estimate import Sharding
    from fipo_trl.testing import tiny_model

    cuda, config, engine = torch.cuda.is_available(), part_config(options, sizes), sizes["engine"]
    tokenizer = tiny_model.build_tokenizer(None, model_max_length=32768)
    weight_bytes = 2 if cuda and options.engine == "zero3" else 4  # DeepSpeed bf16 keeps bf16 weights, FSDP2 fp32
    expected = estimate(
        config, Sharding(options.engine, 3), 8, engine["completion_length"], 2 if cuda else 4, weight_bytes, cuda
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(config, tokenizer, "cpu", torch.float32)
        path = tiny_model.save_tiny_model(os.path.join(tmp, "model"), tokenizer, model)
        for name in ("FIPO", "DAPO"):
            args = training_args(name, tmp, engine["completion_length"], engine["max_steps"], cuda)
            run = train_once(name, path, tokenizer, args, random_rollout(8, engine["completion_length"]))
            rows.append({"trainer": name, **run, "estimate MiB": expected})
    rows[0]["FIPO/DAPO time"] = rows[0]["step s"] / rows[1]["step s"]
    return {
        "launch": f"accelerate launch --config_file configs/accelerate/{options.engine}.yaml --num_processes 1",
        "rows": rows,
    }


def part_vllm(options, sizes):
    """FIPOTrainer with vLLM colocated (real generation), a few steps, 1 process."""
    import tempfile

    import torch

    from fipo_trl.testing import tiny_model

    if not torch.cuda.is_available():
        return {"status": "skipped: no CUDA"}
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return {"status": "skipped: no vLLM"}
    config, part = part_config(options, sizes), sizes["vllm"]
    tokenizer = tiny_model.build_tokenizer(None, model_max_length=32768)
    config["vocab_size"] = len(tokenizer)  # vLLM samples real tokens: every id must decode
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(config, tokenizer, "cpu", torch.float32)
        path = tiny_model.save_tiny_model(os.path.join(tmp, "model"), tokenizer, model)
        vllm = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}
        args = training_args("FIPO", tmp, part["completion_length"], part["max_steps"], True, **vllm)
        run = train_once("FIPO", path, tokenizer, args)
    return {"rows": [{"trainer": "FIPO, vLLM colocate", **run}]}


def part_future_sum(options, sizes):
    """`discounted_future_sum`: median time, peak extra memory, error against a float64 reverse recurrence."""
    import statistics

    import torch

    from fipo_trl import discounted_future_sum

    device, part, rows = torch.device("cuda" if torch.cuda.is_available() else "cpu"), sizes["future_sum"], []
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for length in part["lengths"]:
        for dtype in (torch.float32, torch.bfloat16):
            generator = torch.Generator().manual_seed(length)
            x = torch.randn(part["batch"], length, generator=generator) * 0.05  # log-ratio-like, with masked zeros
            x[torch.rand(part["batch"], length, generator=generator) < 0.1] = 0.0
            x = x.to(device=device, dtype=dtype)
            discounted_future_sum(x, GAMMA)
            sync()
            times = []
            for _ in range(part["repeats"]):
                start = time.perf_counter()
                out = discounted_future_sum(x, GAMMA)
                sync()
                times.append(time.perf_counter() - start)
            reference, carry = torch.empty_like(x, device="cpu", dtype=torch.float64), 0.0
            for t in range(length - 1, -1, -1):  # F_t = x_t + γ F_{t+1}, one step at a time
                carry = x[:, t].double().cpu() + GAMMA * carry
                reference[:, t] = carry
            error = (out.double().cpu() - reference).abs().max().item()
            rows.append(
                {"T": length, "dtype": str(dtype)[6:], "ms": 1000 * statistics.median(times), "max abs err": error}
            )
    return {"rows": rows}


PARTS = {"long": part_long, "engine": part_engine, "vllm": part_vllm, "future_sum": part_future_sum}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: every part's code path")
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results/gpu_check"), help="folder for the JSON")
    parser.add_argument("--part", choices=("long", "engine", "vllm", "future_sum"), help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=("1.5b", "7b"), help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=("zero3", "fsdp2"), help=argparse.SUPPRESS)
    parser.add_argument("--lengths", help="with --part long: completion lengths, comma-separated (a CPU measurement)")
    parser.add_argument("--vocab_size", type=int, help="with --part long --dry-run: the stand-in's vocabulary")
    options = parser.parse_args(argv)
    if options.part is None:
        import torch

        if not options.dry_run and not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --dry-run to exercise the script on CPU)", file=sys.stderr)
            return 2
        return orchestrate(options)
    print(RESULT + json.dumps(PARTS[options.part](options, DRY if options.dry_run else FULL)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
