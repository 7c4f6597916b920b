"""What FIPO costs on top of DAPO in one off-policy training micro-step: median time ratio and peak-memory ratio.

    python benchmarks/step_overhead.py [--completion-length 1024] [--batch 8] [--repeats 15]

Both trainers get the same model (a randomly initialised Qwen2, built locally) and the same stale micro-batch, and run
`_compute_loss` + `backward`: FIPOTrainer, and GRPOTrainer with loss_type="dapo", delta=10. Generation is left out
because it is identical for both. Timings alternate between the two trainers in one process so drift hits both alike;
peak memory is the growth of the process's peak resident memory during one micro-step (`peak_memory.py`).
"""

import argparse
import os
import statistics
import tempfile
import time
import warnings


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peak_memory import ensure_exact_peaks, peak_growth  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from fipo_trl import FIPOConfig, FIPOTrainer  # noqa: E402
from fipo_trl.testing import tiny_model  # noqa: E402


VOCAB = 1024


def build_model(path):
    """Qwen2 2x128 with a 1024-token vocabulary (ids past the byte tokenizer's 259 only appear in the random batch)."""
    tokenizer = tiny_model.build_tokenizer(None, model_max_length=8192)
    model = tiny_model.build_model(
        tokenizer,
        seed=0,
        num_hidden_layers=2,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        vocab_size=VOCAB,
    )
    tiny_model.save_tiny_model(path, tokenizer, model)


def build_trainer(kind, model_dir, out_dir):
    common = {
        "output_dir": out_dir, "use_cpu": True, "bf16": False, "gradient_checkpointing": False, "report_to": "none",
        "per_device_train_batch_size": 8, "num_generations": 8, "steps_per_generation": 8, "disable_dropout": True,
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "fipo":
            args, cls = FIPOConfig(**common), FIPOTrainer
        else:
            args, cls = GRPOConfig(loss_type="dapo", delta=10.0, epsilon_high=0.28, **common), GRPOTrainer
        trainer = cls(
            model=model_dir, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
            train_dataset=Dataset.from_dict({"prompt": ["x"] * 8}),
        )  # fmt: skip
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def stale_batch(batch, completion_length, seed=0):
    g = torch.Generator().manual_seed(seed)
    completion_mask = torch.ones(batch, completion_length, dtype=torch.long)
    completion_mask[::2, completion_length // 2 :] = 0  # half the rows end early
    return {
        "prompt_ids": torch.randint(2, VOCAB, (batch, 64), generator=g),
        "prompt_mask": torch.ones(batch, 64, dtype=torch.long),
        "completion_ids": torch.randint(2, VOCAB, (batch, completion_length), generator=g),
        "completion_mask": completion_mask,
        "advantages": torch.randn(batch, generator=g),
        "num_items_in_batch": completion_mask.sum() * 8,
        # log π_old as if sampled a few optimizer steps ago: the true log-probs of a random model are ≈ −log V
        "old_per_token_logps": -torch.rand(batch, completion_length, generator=g) * 2 - 6.0,
    }


def micro_step(trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completion-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, help="torch threads (1 avoids OpenMP stalls on a busy machine)")
    args = parser.parse_args()
    ensure_exact_peaks()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as work:
        model_dir = os.path.join(work, "model")
        build_model(model_dir)
        trainers = {kind: build_trainer(kind, model_dir, os.path.join(work, kind)) for kind in ("fipo", "dapo")}
        inputs = stale_batch(args.batch, args.completion_length)
        times = {"fipo": [], "dapo": []}
        for trainer in trainers.values():  # warm-up
            micro_step(trainer, inputs)
        for _ in range(args.repeats):
            for kind, trainer in trainers.items():
                start = time.perf_counter()
                micro_step(trainer, inputs)
                times[kind].append(time.perf_counter() - start)
        memory = {}
        for kind, trainer in trainers.items():
            with peak_growth() as peak:
                micro_step(trainer, inputs)
            memory[kind] = peak["mib"]

    median = {kind: statistics.median(t) * 1e3 for kind, t in times.items()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; Qwen2 2x128, B={args.batch}, "
        f"completions {args.completion_length} tokens, {args.repeats} alternating repeats"
    )
    print(f"{'trainer':<28} | {'median ms':>9} | {'peak RSS growth MiB':>19}")
    print("-" * 64)
    print(f"{'GRPOTrainer dapo, delta=10':<28} | {median['dapo']:>9.1f} | {memory['dapo']:>19.1f}")
    print(f"{'FIPOTrainer':<28} | {median['fipo']:>9.1f} | {memory['fipo']:>19.1f}")
    print(
        f"{'ratio FIPO / DAPO':<28} | {median['fipo'] / median['dapo']:>8.3f}x | "
        f"{memory['fipo'] / max(memory['dapo'], 1e-9):>18.3f}x"
    )


if __name__ == "__main__":
    main()
