"""
Build the quickstart's policy: a 0.79M-parameter Qwen2 with a character tokenizer, pre-trained (supervised) on noisy
two-digit additions so that it is right some of the time but far from always.

    python scripts/build_tiny_model.py                      # ~5-10 min; writes fipo_trl/assets/tiny-qwen2-addition
    python scripts/build_tiny_model.py --output_dir /tmp/tiny --noisy_steps 600 --snapshot_every 50   # to explore

What the model is and is not:
1. A character-level Qwen2 (d=128, 4 layers) trained from scratch on `"37+48=?\\nAnswer: 85"`. No chat template.
2. Two phases. Phase 1 learns the skill on clean labels until greedy decoding is right `--skill_threshold` (90%) of
   the time; stopping it earlier does not work, accuracy jumps from ~10% to ~100% too fast to stop in between.
   Phase 2 continues for `--noisy_steps` on labels replaced by a random number `--noise` (65%) of the time, which
   flattens the answer distribution: sampled at T=1 the model is then right only ~30% of the time, while its most
   likely answer (greedy) is still usually right. RL on this model therefore mostly *sharpens* the distribution
   towards an answer it already ranks first; it does not teach a new skill.
3. Deterministic: one seed drives the data, the initialisation and the batch order; on one machine with the same
   torch version the output files are identical (one thread, fixed reduction order).
"""

import argparse
import json
import random
from pathlib import Path

import torch

from fipo_trl.data.synthetic import format_answer, generate_problems, train_and_heldout
from fipo_trl.testing import tiny_model


DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "fipo_trl" / "assets" / "tiny-qwen2-addition"
QUICKSTART_TRAIN_SIZE, QUICKSTART_HELDOUT_SIZE = 4096, 256  # configs/quickstart.yaml


def build_tokenizer(model_max_length=64):
    """The quickstart's character tokenizer (`fipo_trl.testing.tiny_model`): digits, `+-*=x?, :`, newline, "Answer"."""
    return tiny_model.build_tokenizer(model_max_length=model_max_length)


def build_model(tokenizer, seed, max_position_embeddings=64):
    """The quickstart's shapes (d=128, 4 layers, tied embeddings), randomly initialised from `seed`."""
    return tiny_model.build_model(tokenizer, seed, max_position_embeddings=max_position_embeddings)


def noisy_answer(rng, answer, noise):
    """The true answer, or with probability `noise` a uniformly random sum of two two-digit numbers (20…198)."""
    if rng.random() >= noise:
        return answer
    return rng.randint(20, 198)


def encode_batch(tokenizer, rows, answers):
    """Prompt + "Answer: <n>" + eos, right-padded; labels are -100 on the prompt and padding (loss on the answer)."""
    return encode_completions(tokenizer, [row["prompt"] for row in rows], [format_answer(a) for a in answers])


def encode_completions(tokenizer, prompts, completions):
    """Prompt + completion + eos, right-padded; labels are -100 on the prompt and padding (loss on the completion)."""
    ids, labels = [], []
    for prompt_text, completion_text in zip(prompts, completions, strict=True):
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion = tokenizer(completion_text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(prompt + completion)
        labels.append([-100] * len(prompt) + completion)
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    label_ids = torch.full((len(ids), width), -100)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
        input_ids[i, : len(x)], label_ids[i, : len(y)] = torch.tensor(x), torch.tensor(y)
        attention_mask[i, : len(x)] = 1
    return input_ids, attention_mask, label_ids


def supervised_step(model, optimizer, schedule, batch):
    """One step on `(input_ids, attention_mask, labels)`: the loss, gradients clipped at 1, AdamW; returns the loss."""
    input_ids, attention_mask, labels = batch
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


@torch.no_grad()
def accuracy(model, tokenizer, rows, do_sample, seed=0):
    """Fraction of `rows` answered exactly right, with one greedy or T=1 sampled completion each."""
    torch.manual_seed(seed)
    model.eval()
    inputs = tokenizer([row["prompt"] for row in rows], return_tensors="pt", padding=True, add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=16, do_sample=do_sample, temperature=1.0, top_p=1.0)
    texts = tokenizer.batch_decode(output[:, inputs["input_ids"].size(1) :], skip_special_tokens=True)
    model.train()
    right = [text.strip() == format_answer(row["solution"]) for text, row in zip(texts, rows, strict=True)]
    return sum(right) / len(rows)


def save(model, tokenizer, stats, output_dir):
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "build_stats.json").write_text(json.dumps(stats, indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--skill_threshold", type=float, default=0.9, help="greedy accuracy that ends phase 1")
    parser.add_argument("--max_clean_steps", type=int, default=3000, help="cap on phase 1 (clean labels)")
    parser.add_argument("--noisy_steps", type=int, default=300, help="phase 2: steps on noisy labels")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--noise", type=float, default=0.65, help="fraction of phase-2 answers replaced at random")
    parser.add_argument("--train_size", type=int, default=6000, help="distinct SFT problems (of 8100 possible)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--snapshot_every", type=int, default=0, help="save phase-2 snapshots (to pick noisy_steps)")
    args = parser.parse_args()

    settings = {k: v for k, v in vars(args).items() if k not in ("output_dir", "snapshot_every")}
    torch.set_num_threads(1)  # one thread: reproducible float reductions, and no OpenMP spin on a busy CPU
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, args.seed)
    print(f"Qwen2 with {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {len(tokenizer)}")

    # The quickstart's held-out problems (synthetic_seed 0) stay unseen here too, so its before/after check is fair
    _, quickstart_heldout = train_and_heldout(QUICKSTART_TRAIN_SIZE, QUICKSTART_HELDOUT_SIZE, seed=0)
    check = list(quickstart_heldout)
    train = generate_problems(args.train_size, seed=args.seed, exclude=quickstart_heldout["prompt"])
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    warmup = 50  # then a constant rate: a phase-2 snapshot at step N equals a run with --noisy_steps N
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 1.0))

    def train_step(noise):
        rows = rng.sample(train, args.batch_size)
        answers = [noisy_answer(rng, int(row["solution"]), noise) for row in rows]
        return supervised_step(model, optimizer, schedule, encode_batch(tokenizer, rows, answers))

    def report(phase, step, loss):
        stats = {
            "phase": phase,
            "step": step,
            "loss": round(loss, 4),
            "sampled_accuracy_T1": accuracy(model, tokenizer, check, True),
            "greedy_accuracy": accuracy(model, tokenizer, check, False),
        }
        print(json.dumps(stats), flush=True)
        return stats

    # Phase 1: clean labels until the greedy answer is usually right (the skill)
    model.train()
    clean_steps = 0
    while clean_steps < args.max_clean_steps:
        loss = train_step(noise=0.0)
        clean_steps += 1
        if clean_steps % 100 == 0 and report("clean", clean_steps, loss)["greedy_accuracy"] >= args.skill_threshold:
            break
    # Phase 2: noisy labels flatten the answer distribution, so sampling is right only some of the time
    for step in range(1, args.noisy_steps + 1):
        loss = train_step(noise=args.noise)
        if args.snapshot_every and step % args.snapshot_every == 0:
            stats = {**settings, "noisy_steps": step, "clean_steps": clean_steps, **report("noisy", step, loss)}
            save(model, tokenizer, stats, args.output_dir / "snapshots" / f"noisy-{step}")

    stats = {**settings, "clean_steps": clean_steps, **report("noisy", args.noisy_steps, loss)}
    save(model, tokenizer, stats, args.output_dir)
    print(f"Saved to {args.output_dir}")


if __name__ == "__main__":
    main()
