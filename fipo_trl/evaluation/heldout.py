"""The held-out check of `fipo-trl train`: one sampled completion per problem, before and after training."""


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
    does ([`~fipo_trl.evaluation.generation.generate_on_processes`], which ZeRO-3 needs), and the per-row results
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
        max_new_tokens (`int`, *optional*, defaults to `64`):
            Completion budget (use the training `max_completion_length`).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature (use the training one).
        seed (`int`, *optional*, defaults to `0`):
            Sampling seed (process `r` uses `seed + r`); the training RNG is left untouched.
        batch_size (`int`, *optional*, defaults to `64`):
            Sequences per `generate` call.
        gradient_checkpointing_kwargs (`dict`, *optional*):
            The run's, to turn gradient checkpointing back on after generation.

    Returns:
        `dict[str, float]`: `accuracy` in [0, 1] and `mean_length`, the mean completion length in tokens (EOS
        included), over all rows.
    """
    from accelerate.utils import gather_object

    from .generation import generate_on_processes

    rank = accelerator.process_index if accelerator else 0
    indices, samples = generate_on_processes(
        model,
        tokenizer,
        dataset["prompt"],
        accelerator=accelerator,
        gradient_checkpointing_kwargs=gradient_checkpointing_kwargs,
        k=1,
        temperature=temperature,
        top_p=1.0,
        max_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed + rank,
    )
    rows = dataset.select(indices)
    texts = [completions[0]["completion"] for completions in samples]
    if not isinstance(rows["prompt"][0], str):  # chat prompts get chat completions, as in training
        texts = [[{"role": "assistant", "content": text}] for text in texts]
    rewards = reward_func(texts, solution=rows["solution"])
    results = [
        (index, reward is not None and reward > 0, completions[0]["num_tokens"])
        for index, reward, completions in zip(indices, rewards, samples, strict=True)
    ]
    if accelerator is not None and accelerator.num_processes > 1:
        results = gather_object(results)
    # a padded share repeats its last row: count each row once
    unique = {index: (correct, tokens) for index, correct, tokens in results}
    correct = sum(ok for ok, _ in unique.values())
    tokens = sum(length for _, length in unique.values())
    return {"accuracy": correct / max(len(unique), 1), "mean_length": tokens / max(len(unique), 1)}
