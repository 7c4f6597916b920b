"""
Build the reasoning testbed's policy: the quickstart's character-level Qwen2, pre-trained (supervised) on sums of 3-6
two-digit numbers answered either directly (short, mostly wrong) or step by step (longer, usually right).

    python scripts/build_reasoning_model.py      # ~35 min on an idle core; writes fipo_trl/assets/tiny-qwen2-long-sum
    python scripts/build_reasoning_model.py --output_dir /tmp/ls --skill_checkpoint /tmp/ls-skill.pt   # to explore

What the model is and is not:
1. The architecture and tokenizer of `scripts/build_tiny_model.py` (d=128, 4 layers, ~0.79M parameters, one token per
   character) with 128 positions, trained from scratch on `fipo_trl.data.synthetic`'s `long_sum` task: the prompt
   `"23+45+17+88=?\\n"` is completed either by `"Answer: 173"` (direct) or by
   `"23+45=68\\n68+17=85\\n85+88=173\\nAnswer: 173"` (step by step, one running sum per line).
2. Direct answers are trained with label noise (`--direct_noise` of them replaced by the true sum ± 1..30), and a
   model this small cannot add 3-6 numbers in one go anyway: sampled direct answers are almost always wrong. The
   step-by-step labels are always right, and each line is a single two-number addition the model learns.
3. Two phases, because the skill arrives abruptly and only on a step-heavy mix (measured on a
   prototype): phase 1 ("skill") trains on `--skill_step_share` (80%) step-by-step answers until the greedy
   step-by-step answers are right `--skill_threshold` of the time. Phase 2 ("prior") keeps the skill but
   makes step by step rare, the rarer the more operands (`--prior_step_shares`), at a low learning rate, until the
   model samples step by step at most `--target_step_share` of the time. RL then has a reason to lengthen answers, and
   room to do it gradually: one operand count after the other, from 3 (~35 tokens) to 6 (~66 tokens).
4. Deterministic: one seed drives the data, the initialisation and the batch order, one thread keeps float
   reductions in a fixed order, and the stopping rules read deterministic evaluations. The same command on the same
   machine and torch version writes identical weights (`tests/test_testbed.py` checks a short build).
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared builder, when imported from elsewhere

from build_tiny_model import build_model, build_tokenizer, encode_completions, save, supervised_step  # noqa: E402

from fipo_trl.data.synthetic import (  # noqa: E402
    LONG_SUM_OPERANDS,
    format_answer,
    generate_problems,
    reasoning_steps,
    step_by_step_answer,
    train_and_heldout,
)
from fipo_trl.rewards import dapo_accuracy_reward  # noqa: E402


DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "fipo_trl" / "assets" / "tiny-qwen2-long-sum"
RECIPE_TRAIN_SIZE, RECIPE_HELDOUT_SIZE = 4096, 256  # configs/long_sum.yaml (synthetic_seed 0)
MAX_POSITIONS = 128  # prompt <= 20 tokens, step-by-step completion <= 66 with eos, and room to ramble
MAX_NEW_TOKENS = 80  # configs/long_sum.yaml max_completion_length


def noisy_direct(rng, answer, noise):
    """The true sum, or with probability `noise` the sum off by 1..30 either way (never below 0)."""
    if rng.random() >= noise:
        return answer
    return max(0, answer + rng.choice((-1, 1)) * rng.randint(1, 30))


def completion_for(rng, row, step_share, noise):
    """A training completion: step by step with probability `step_share`, else a (noisy) direct answer."""
    if rng.random() < step_share:
        return step_by_step_answer(row["prompt"])
    return format_answer(noisy_direct(rng, int(row["solution"]), noise))


def operand_count(prompt):
    return prompt.count("+") + 1


@torch.no_grad()
def sample(model, tokenizer, prompts, do_sample, seed, batch_size=128):
    """One completion per prompt (greedy, or sampled at T=1 without top-k/top-p); returns (texts, token counts)."""
    torch.manual_seed(seed)
    model.eval()
    texts, lengths = [], []
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        output = model.generate(
            **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=do_sample, temperature=1.0, top_p=1.0
        )
        completions = output[:, inputs["input_ids"].size(1) :]
        for ids in completions.tolist():
            # tokens up to and including eos, as TRL counts a completion's length
            length = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
            lengths.append(length)
        texts += tokenizer.batch_decode(completions, skip_special_tokens=True)
    model.train()
    return texts, lengths


def describe(rows, texts, lengths):
    """Accuracy, share and accuracy of step-by-step answers, direct accuracy and length, over sampled completions."""
    right = [reward > 0 for reward in dapo_accuracy_reward(texts, solution=[row["solution"] for row in rows])]
    stepwise = [reasoning_steps(text) > 0 for text in texts]

    def rate(flags):
        return round(sum(flags) / len(flags), 4) if flags else None

    ordered = sorted(lengths)
    stats = {
        "accuracy": rate(right),
        "step_share": rate(stepwise),
        "step_accuracy": rate([r for r, s in zip(right, stepwise, strict=True) if s]),
        "direct_accuracy": rate([r for r, s in zip(right, stepwise, strict=True) if not s]),
        "mean_length": round(sum(lengths) / len(lengths), 2),
        "length_p10_p50_p90": [ordered[int(q * (len(ordered) - 1))] for q in (0.1, 0.5, 0.9)],
        "truncated": rate([length >= MAX_NEW_TOKENS for length in lengths]),
    }
    for n in range(LONG_SUM_OPERANDS[0], LONG_SUM_OPERANDS[1] + 1):
        mine = [s for s, row in zip(stepwise, rows, strict=True) if operand_count(row["prompt"]) == n]
        stats[f"step_share_{n}_operands"] = rate(mine)
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--train_size", type=int, default=20000, help="distinct SFT problems")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--direct_noise", type=float, default=0.5, help="share of direct labels off by 1..30")
    parser.add_argument("--skill_step_share", type=float, default=0.8, help="phase 1: share of step-by-step labels")
    parser.add_argument("--skill_learning_rate", type=float, default=2e-3)
    parser.add_argument(
        "--skill_threshold", type=float, default=0.7, help="greedy step-by-step accuracy that ends phase 1"
    )
    parser.add_argument("--max_skill_steps", type=int, default=1400)
    parser.add_argument("--check_every", type=int, default=100, help="phase 1: steps between greedy checks")
    parser.add_argument(
        "--prior_step_shares",
        type=float,
        nargs=4,
        default=[0.4, 0.25, 0.15, 0.1],
        help="phase 2: share of step-by-step labels for 3, 4, 5 and 6 operands",
    )
    parser.add_argument("--prior_learning_rate", type=float, default=5e-4)
    parser.add_argument("--target_step_share", type=float, default=0.3, help="sampled share that ends phase 2")
    parser.add_argument("--max_prior_steps", type=int, default=200)
    parser.add_argument("--prior_check_every", type=int, default=25, help="phase 2: steps between sampled checks")
    parser.add_argument("--check_size", type=int, default=128, help="held-out prompts read by the stopping rules")
    parser.add_argument("--final_size", type=int, default=RECIPE_HELDOUT_SIZE, help="held-out prompts of build_stats")
    parser.add_argument("--skill_checkpoint", type=Path, help="save the end of phase 1 here, or resume from it")
    args = parser.parse_args(argv)
    if len(args.prior_step_shares) != LONG_SUM_OPERANDS[1] - LONG_SUM_OPERANDS[0] + 1:
        raise ValueError("--prior_step_shares needs one share per operand count (3, 4, 5, 6).")

    torch.set_num_threads(1)  # one thread: reproducible float reductions, and no OpenMP spin on a busy CPU
    tokenizer = build_tokenizer(model_max_length=MAX_POSITIONS)
    model = build_model(tokenizer, args.seed, max_position_embeddings=MAX_POSITIONS)
    print(f"Qwen2 with {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {len(tokenizer)}")

    # The recipe's held-out problems stay unseen, so the before/after check of configs/long_sum.yaml is fair
    _, heldout = train_and_heldout(RECIPE_TRAIN_SIZE, RECIPE_HELDOUT_SIZE, seed=0, task="long_sum")
    heldout = list(heldout)
    check = heldout[: args.check_size]
    train = generate_problems(args.train_size, seed=args.seed, task="long_sum", exclude=[r["prompt"] for r in heldout])
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.skill_learning_rate, weight_decay=0.01)
    warmup = 50
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 1.0))
    history = []
    started = time.monotonic()

    def train_step(step_share):
        rows = rng.sample(train, args.batch_size)
        if isinstance(step_share, float):
            completions = [completion_for(rng, row, step_share, args.direct_noise) for row in rows]
        else:  # one share per operand count
            completions = [
                completion_for(rng, row, step_share[operand_count(row["prompt"])], args.direct_noise) for row in rows
            ]
        batch = encode_completions(tokenizer, [r["prompt"] for r in rows], completions)
        return supervised_step(model, optimizer, schedule, batch)

    def report(phase, step, loss, do_sample):
        texts, lengths = sample(model, tokenizer, [r["prompt"] for r in check], do_sample, seed=0)
        stats = {"phase": phase, "step": step, "loss": round(loss, 4), "sampled": do_sample}
        stats.update(describe(check, texts, lengths))
        print(json.dumps({**stats, "wall_s": round(time.monotonic() - started)}), flush=True)
        history.append(stats)
        return stats

    # Phase 1: a step-heavy mix until the greedy (step-by-step) answer is usually right
    model.train()
    skill_steps = 0
    if args.skill_checkpoint and args.skill_checkpoint.exists():
        state = torch.load(args.skill_checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        skill_steps, history = state["skill_steps"], state["history"]
        print(f"Resumed phase 1 from {args.skill_checkpoint} ({skill_steps} steps)")
    # a resumed phase 1 goes on where it stopped if its rule allows (e.g. a higher --max_skill_steps)
    skilled = any(h["phase"] == "skill" and (h["step_accuracy"] or 0) >= args.skill_threshold for h in history)
    resumed_at = skill_steps
    while not skilled and skill_steps < args.max_skill_steps:
        loss = train_step(args.skill_step_share)
        skill_steps += 1
        if skill_steps % args.check_every == 0:
            # greedy picks direct for some prompts: the skill is the accuracy of the step-by-step answers
            stats = report("skill", skill_steps, loss, do_sample=False)
            skilled = (stats["step_accuracy"] or 0) >= args.skill_threshold
    if args.skill_checkpoint and skill_steps > resumed_at:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "skill_steps": skill_steps,
            "history": history,
        }
        torch.save(state, args.skill_checkpoint)

    # Phase 2: a low rate on a direct-heavy mix moves the prior (which format to start) more than the skill
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = args.prior_learning_rate
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    shares = dict(zip(range(LONG_SUM_OPERANDS[0], LONG_SUM_OPERANDS[1] + 1), args.prior_step_shares, strict=True))
    prior_steps = 0
    while prior_steps < args.max_prior_steps:
        loss = train_step(shares)
        prior_steps += 1
        if prior_steps % args.prior_check_every == 0:
            if report("prior", prior_steps, loss, do_sample=True)["step_share"] <= args.target_step_share:
                break

    # What RL starts from: the recipe's whole held-out set, sampled as the recipe's check samples it
    heldout = heldout[: args.final_size]
    texts, lengths = sample(model, tokenizer, [r["prompt"] for r in heldout], do_sample=True, seed=0)
    final = describe(heldout, texts, lengths)
    greedy_texts, greedy_lengths = sample(model, tokenizer, [r["prompt"] for r in heldout], do_sample=False, seed=0)
    final["greedy_accuracy"] = describe(heldout, greedy_texts, greedy_lengths)["accuracy"]
    settings = {k: v for k, v in vars(args).items() if k not in ("output_dir", "skill_checkpoint")}
    stats = {
        **settings,
        "skill_steps": skill_steps,
        "prior_steps": prior_steps,
        "heldout_T1": final,
        "history": history,
        "examples": [{"prompt": r["prompt"], "completion": t} for r, t in zip(heldout[:6], texts[:6], strict=True)],
    }
    print(json.dumps(final), flush=True)
    save(model, tokenizer, stats, args.output_dir)
    print(f"Saved to {args.output_dir} after {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
