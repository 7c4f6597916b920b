"""
Build the quickstart's policy: a ~1M-parameter Qwen2 with a character tokenizer, pre-trained (supervised) on noisy
two-digit additions so that it is right some of the time but far from always.

    python scripts/build_tiny_model.py                      # writes fipo_trl/assets/tiny-qwen2-addition
    python scripts/build_tiny_model.py --steps 200 --output_dir /tmp/tiny   # quicker, for experiments

What the model is and is not:
1. A character-level Qwen2 (d=128, 4 layers) trained from scratch on `"37+48=?\\nAnswer: 85"`. No chat template.
2. The SFT answers are deliberately wrong `--noise` of the time (a near miss of the true sum): with clean labels
   the model jumps from ~10% to ~100% too fast to stop in between. Sampled at T=1 it is then right ~30% of the time,
   while its most likely answer (greedy) is usually right: RL on this model mostly *sharpens* the distribution
   towards an answer it already ranks first. It does not teach a new skill.
3. Deterministic: one seed drives the data, the initialisation and the batch order; on one machine with the same
   torch version the output files are identical (one thread, fixed reduction order).
"""

import argparse
import json
import random
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from fipo_trl.synthetic import format_answer, generate_problems, train_and_heldout


DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "fipo_trl" / "assets" / "tiny-qwen2-addition"
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<unk>"]
CHARACTERS = list("0123456789+-*=x?, :\n") + sorted(set("Answer"))


def build_tokenizer():
    """A character tokenizer; `Fuse` decodes ids back to plain text (no spaces between characters)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    # pad must differ from eos, or TRL's completion mask would cut every completion at its first pad/eos
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=64,
    )


def build_model(tokenizer, seed):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    # TRL and `generate` read eos/pad from here, not from the tokenizer
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


def noisy_answer(rng, answer, noise):
    """The true answer, or with probability `noise` a near miss (±1…±3 or ±10, as a slip in one digit)."""
    if rng.random() >= noise:
        return answer
    wrong = answer + rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])
    return wrong if wrong >= 0 else answer + 10


def encode_batch(tokenizer, rows, answers):
    """Prompt + completion + eos, right-padded; labels are -100 on the prompt and padding (loss on the answer)."""
    ids, labels = [], []
    for row, answer in zip(rows, answers, strict=True):
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(format_answer(answer), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps of supervised pre-training")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--noise", type=float, default=0.65, help="fraction of SFT answers replaced by near misses")
    parser.add_argument("--train_size", type=int, default=6000, help="distinct SFT problems (of 8100 possible)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--snapshot_every", type=int, default=0, help="also save step-N snapshots (to pick --steps)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # one thread: reproducible float reductions, and no OpenMP spin on a busy CPU
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, args.seed)
    print(f"Qwen2 with {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {len(tokenizer)}")

    # The SFT problems are a different seed than the RL quickstart's, and the check set is disjoint from them
    train = generate_problems(args.train_size, seed=args.seed, task="addition", digits=2)
    _, check = train_and_heldout(0, 256, seed=args.seed + 1)
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    # A constant rate after a fixed warmup: the model after N steps is the same whatever --steps is
    warmup = 50
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 1.0))
    model.train()
    for step in range(1, args.steps + 1):
        rows = rng.sample(train, args.batch_size)
        answers = [noisy_answer(rng, int(row["solution"]), args.noise) for row in rows]
        input_ids, attention_mask, labels = encode_batch(tokenizer, rows, answers)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps:
            rows = list(check)[:128]
            print(
                f"step {step:4d}  loss {loss.item():.3f}  sampled acc {accuracy(model, tokenizer, rows, True):.1%}  "
                f"greedy acc {accuracy(model, tokenizer, rows, False):.1%}",
                flush=True,
            )
        if args.snapshot_every and step % args.snapshot_every == 0:
            model.save_pretrained(args.output_dir / "snapshots" / f"step-{step}")

    rows = list(check)
    stats = {
        "sft_steps": args.steps,
        "noise": args.noise,
        "seed": args.seed,
        "sampled_accuracy_T1": accuracy(model, tokenizer, rows, True),
        "greedy_accuracy": accuracy(model, tokenizer, rows, False),
    }
    print(json.dumps(stats))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    (args.output_dir / "build_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"Saved to {args.output_dir}")


if __name__ == "__main__":
    main()
