"""The held-out check of `fipo-trl train`: one sampled completion per problem, before and after training."""

import functools


def heldout_check(
    model,
    tokenizer,
    dataset,
    reward_func,
    accelerator=None,
    max_new_tokens=64,
    temperature=1.0,
    seed=0,
    batch_size=64,
    gradient_checkpointing_kwargs=None,
) -> dict[str, float]:
    """
    Avg@1 and mean completion length on `dataset`: one completion per row, sampled as in training (same
    temperature, no top-p/top-k, prompts rendered as TRL renders them), scored by `reward_func` (correct when the
    reward is positive). Under several processes each samples a padded share of the rows, as `MathEvalCallback`
    does ([`~fipo_trl.evaluation.generation.score_on_processes`], which ZeRO-3 needs), and the per-row results
    are gathered and counted once.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The policy: a plain model, or the trainer's `model_wrapped` with its `accelerator`; its train/eval mode
            is restored after.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        dataset ([`~datasets.Dataset`]):
            Rows with `prompt` and `solution`.
        reward_func (`callable`):
            A TRL reward function, e.g. `dapo_accuracy_reward`.
        accelerator ([`~accelerate.Accelerator`], *optional*):
            Shares the rows over processes and gathers the results.
        max_new_tokens (`int`, *optional*, defaults to `64`), temperature (`float`, *optional*, defaults to `1.0`):
            The training `max_completion_length` and `temperature`.
        seed (`int`, *optional*, defaults to `0`):
            Sampling seed (process `r` uses `seed + r`); the training RNG is left untouched.
        batch_size (`int`, *optional*, defaults to `64`):
            Sequences per `generate` call.
        gradient_checkpointing_kwargs (`dict`, *optional*):
            The run's, to turn gradient checkpointing back on after generation.
    Returns:
        `dict[str, float]`: `accuracy` in [0, 1] and `mean_length` in tokens (EOS included), over all rows.
    """
    from .generation import Sampling, score_on_processes

    rank = accelerator.process_index if accelerator else 0
    # as in training: the training temperature, no top-p / top-k; each process its own seed
    sampling = Sampling(k=1, temperature=temperature, max_tokens=max_new_tokens, seed=seed + rank)
    results = score_on_processes(
        model,
        tokenizer,
        dataset,
        functools.partial(_score_rows, reward_func),
        sampling,
        batch_size,
        accelerator=accelerator,
        gradient_checkpointing_kwargs=gradient_checkpointing_kwargs,
    )
    correct = sum(ok for ok, _ in results)
    tokens = sum(length for _, length in results)
    return {"accuracy": correct / max(len(results), 1), "mean_length": tokens / max(len(results), 1)}


def _score_rows(reward_func, rows, indices, samples):
    """`(correct, num_tokens)` of each row's one sample: correct when the reward is positive."""
    texts = [completions[0]["completion"] for completions in samples]
    if not isinstance(rows["prompt"][0], str):  # chat prompts get chat completions, as in training
        texts = [[{"role": "assistant", "content": text}] for text in texts]
    rewards = reward_func(texts, solution=rows["solution"])
    return [
        (reward is not None and reward > 0, completions[0]["num_tokens"])
        for reward, completions in zip(rewards, samples, strict=True)
    ]
