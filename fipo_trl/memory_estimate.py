"""
Memory per GPU of a recipe at scale, without loading a model: parameter counts from a model's config or Qwen2.5's
published shapes, the per-GPU memory of weights, gradients and AdamW states under ZeRO / FSDP, and the peak of one
training micro-step (checkpointed layer inputs, the recomputed layer, gathered parameters, TRL 1.16's fused LM head,
the loss's per-token tensors). Pure arithmetic: no torch, no TRL.
"""

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path


# Published config.json shapes (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings)
QWEN25_SHAPES = {
    "0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "3b": (2048, 11008, 36, 16, 2, 151936, True),
    "7b": (3584, 18944, 28, 28, 4, 152064, False),
    "14b": (5120, 13824, 48, 40, 8, 152064, False),
    "32b": (5120, 27648, 64, 40, 8, 152064, False),
    "72b": (8192, 29568, 80, 64, 8, 152064, False),
}
_QWEN25_NAME = re.compile(r"qwen2\.5-(?:math-|coder-)?(\d+(?:\.\d+)?b)", re.IGNORECASE)

# Bytes per parameter with bf16 mixed precision and AdamW: bf16 weights 2, bf16 grads 2, fp32 master + m + v 12
WEIGHT_BYTES, GRAD_BYTES, OPTIM_BYTES = 2, 2, 12


GIB = 1024**3


def layer_parameter_count(config):
    """Parameters of one decoder layer: attention (with Qwen2's q/k/v biases), the gated MLP and its two norms."""
    hidden, inter, heads = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    qkv_bias = config.get("attention_bias", config.get("model_type") == "qwen2")
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * (q + 2 * kv) + q * hidden + (q + 2 * kv if qkv_bias else 0)
    return attention + 3 * hidden * inter + 2 * hidden


def parameter_count(config):
    """
    Parameters of a Qwen2/Llama-style decoder from its `config.json` mapping, or `None` if a shape is missing.

    Counts embeddings, the decoder layers, the final norm and an untied LM head.
    """
    try:
        hidden, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
        per_layer = layer_parameter_count(config)
    except KeyError:
        return None
    head = 0 if config.get("tie_word_embeddings", False) else vocab * hidden
    return vocab * hidden + layers * per_layer + hidden + head


def model_shape(name_or_path):
    """`(config, source)`: a local `config.json`, else the Qwen2.5 table by name, else `(None, "unknown")`."""
    config_file = Path(name_or_path or "") / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text()), str(config_file)
    match = _QWEN25_NAME.search(name_or_path or "")
    if match and match.group(1).lower() in QWEN25_SHAPES:
        hidden, inter, layers, heads, kv_heads, vocab, tied = QWEN25_SHAPES[match.group(1).lower()]
        shape = {
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "vocab_size": vocab,
            "tie_word_embeddings": tied,
            "model_type": "qwen2",
        }
        return shape, f"Qwen2.5-{match.group(1).upper()} table"
    return None, "unknown"


@dataclass
class Sharding:
    """How the training state is split, from an accelerate config file."""

    label: str
    zero_stage: int  # 0 = replicated (single GPU, DDP); FSDP full-shard counts as 3
    offload_optimizer: bool = False
    offload_params: bool = False
    num_processes: int | None = None
    num_machines: int | None = None


def memory_per_gpu(num_params, sharding, world):
    """Bytes per GPU for weights, gradients and AdamW states (ZeRO paper accounting, 16 bytes/param in total)."""
    shard = {
        0: (1, 1, 1),  # replicated: DDP keeps fp32 weights + grads + moments, the same 16 bytes
        1: (1, 1, world),
        2: (1, world, world),
        3: (world, world, world),
    }[min(sharding.zero_stage, 3)]
    weights = 0 if sharding.offload_params else WEIGHT_BYTES * num_params / shard[0]
    grads = GRAD_BYTES * num_params / shard[1]
    optimizer = 0 if sharding.offload_optimizer else OPTIM_BYTES * num_params / shard[2]
    return weights + grads + optimizer


# TRL 1.16's fused LM head (trl/kernels/chunked_logprob.py): logits exist only as tiles of 4096 tokens × 32768 words
LM_HEAD_TILE_TOKENS, LM_HEAD_TILE_VOCAB = 4096, 32768
# fp32 tiles alive at once in its torch fallback's backward (no Triton, e.g. CPU): the scaled logits twice, log p, p,
# the gradient, the one-hot target and two temporaries of the gradient's update
LM_HEAD_TORCH_TILES = 8
# (B, T) fp32 tensors of TRL's clipped loss and FIPO's weights alive at once (ratios, clips, masks, future sums)
LOSS_TENSORS = 32
# What CUDA's context and the caching allocator's slack take before the first tensor, per GPU
CUDA_OVERHEAD = 2 * GIB
GPU_SIZES = {"80 GB (H100, A100)": 80e9, "141 GB (H200)": 141e9}


@dataclass
class MicroStep:
    """
    One training micro-step on one GPU: `sequences` rows of `prompt_length + completion_length` tokens.

    `activation_bytes` is 2 under bf16 autocast or bf16 weights, 4 in fp32; `weight_bytes` the dtype the forward
    reads the weights in (bf16 under DeepSpeed / FSDP mixed precision). `lm_head_fp32` is GRPOConfig's
    `cast_lm_head_to_fp32`. `triton`: on CUDA the fused LM head scores only the completion tokens, elsewhere every
    position.
    """

    sequences: int
    prompt_length: int
    completion_length: int
    gradient_checkpointing: bool = True
    activation_bytes: int = 2
    weight_bytes: int = 2
    lm_head_fp32: bool = False
    triton: bool = True

    @property
    def tokens(self):
        return self.sequences * (self.prompt_length + self.completion_length)

    @property
    def scored_tokens(self):
        if self.triton:
            return self.sequences * self.completion_length
        return self.sequences * (self.prompt_length + self.completion_length - 1)


def layer_activations(config, step):
    """
    Bytes one decoder layer holds for its backward, over the micro-step's tokens, with flash / SDPA attention.

    Per token, from Qwen2's layer, in elements of `a = activation_bytes` unless stated: the two RMSNorms keep an
    fp32 copy of their input and its normalised value (16H bytes) and an output each (2H); attention keeps the
    rotated q, k, the v and its output (2q + 2kv) and o_proj's input (q); the MLP keeps gate, up, silu(gate) and
    their product (4I); gradients in flight add the MLP's three (3I) and two of the residual stream (2H). In all
    `16H + a·(4H + 3q + 2kv + 7I)` bytes. With fp32 weights under bf16 autocast the residual stream stays fp32, so
    the norms' outputs and the rotated q, k are fp32: `4H + 2(q + kv)` bytes more. Eager attention would add
    `heads × S²` per sequence.
    """
    hidden, inter, heads = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    q, kv = heads * head_dim, (config.get("num_key_value_heads") or heads) * head_dim
    a = step.activation_bytes
    fp32_stream = 4 * hidden + 2 * (q + kv) if step.weight_bytes > a else 0
    return step.tokens * (16 * hidden + a * (4 * hidden + 3 * q + 2 * kv + 7 * inter) + fp32_stream)


def weight_casts(config, step):
    """
    fp32 weights under bf16 autocast: each linear keeps the bf16 copy of its weight for the backward,
    `layer parameters × activation_bytes` per layer; 0 when the weights already are in the compute dtype.
    """
    return layer_parameter_count(config) * step.activation_bytes if step.weight_bytes > step.activation_bytes else 0


def saved_activations(config, step):
    """
    Activations kept through the whole backward: with gradient checkpointing, each layer's input
    (`L × tokens × H × activation_bytes`); without, every layer's saved tensors and weight casts
    (`L × (layer_activations + weight_casts)`).
    """
    layers = config["num_hidden_layers"]
    if step.gradient_checkpointing:
        return layers * step.tokens * config["hidden_size"] * step.activation_bytes
    return layers * (layer_activations(config, step) + weight_casts(config, step))


def recomputed_layer(config, step):
    """With gradient checkpointing, the layer recomputed and backpropagated: `layer_activations + weight_casts`."""
    return layer_activations(config, step) + weight_casts(config, step) if step.gradient_checkpointing else 0


def lm_head_memory(config, step):
    """
    Bytes of TRL 1.16's fused LM head (`add_fused_lm_head`) at its peak, the backward; it never holds the logits.

    With `N = scored_tokens`, `c` the compute bytes (4 with `lm_head_fp32`, else `activation_bytes`):
    one logits tile `min(N, 4096) × min(V, 32768) × c` (plus 8 fp32 tiles in the torch fallback), the saved hidden
    states `N × H × c`, the fp32 gradient accumulators of the hidden states `N × H × 4` and of the head's weight
    `V × H × 4`, and their casts `N × H × a + V × H × weight_bytes`.
    """
    hidden, vocab, tokens = config["hidden_size"], config["vocab_size"], step.scored_tokens
    compute = 4 if step.lm_head_fp32 else step.activation_bytes
    tile = min(tokens, LM_HEAD_TILE_TOKENS) * min(vocab, LM_HEAD_TILE_VOCAB)
    tiles = tile * compute + (0 if step.triton else LM_HEAD_TORCH_TILES * 4 * tile)
    grad_hidden = tokens * hidden * (4 + step.activation_bytes)
    grad_weight = vocab * hidden * (4 + step.weight_bytes)
    return tiles + tokens * hidden * compute + grad_hidden + grad_weight


def full_logits(config, step):
    """What an unfused head would hold: `N × V` logits in compute dtype, their fp32 log-softmax and its gradient."""
    return step.scored_tokens * config["vocab_size"] * (step.activation_bytes + 4 + 4)


def _sharded_parameters(sharding, world):
    return sharding.zero_stage >= 3 and (world > 1 or sharding.offload_params)


def gathered_layers(config, sharding, world, step):
    """
    Under ZeRO-3 / FSDP full shard: the full weights of the layer in backward and of the prefetched next one, and the
    layer's unsharded gradients before their reduce-scatter, `3 × layer parameters × weight_bytes`; else 0 (the
    weights are whole already and counted in the state).
    """
    return 3 * layer_parameter_count(config) * step.weight_bytes if _sharded_parameters(sharding, world) else 0


def gathered_lm_head(config, sharding, world, step):
    """Under ZeRO-3 / FSDP full shard, the whole LM head the fused kernel gathers: `V × H × weight_bytes`; else 0."""
    if not _sharded_parameters(sharding, world):
        return 0
    return config["vocab_size"] * config["hidden_size"] * step.weight_bytes


def loss_tensors(step):
    """The loss's per-token fp32 tensors, `32 × sequences × completion_length × 4` (TRL's clipped loss + FIPO's)."""
    return LOSS_TENSORS * step.sequences * step.completion_length * 4


def micro_step_memory(config, sharding, world, step):
    """
    `(terms, peak)`: bytes per GPU of one training micro-step, by term, and its peak.

    `peak = state + saved activations + loss + max(LM-head backward, layer backward)`: the LM head's buffers
    (`lm_head_memory + gathered_lm_head`) are freed before the last layer's backward (`recomputed_layer +
    gathered_layers`) starts, so the two never add up.
    """
    terms = {
        "weights + grads + AdamW states": memory_per_gpu(parameter_count(config), sharding, world),
        "saved activations": saved_activations(config, step),
        "loss tensors (fp32)": loss_tensors(step),
        "LM-head backward": lm_head_memory(config, step) + gathered_lm_head(config, sharding, world, step),
        "layer backward": recomputed_layer(config, step) + gathered_layers(config, sharding, world, step),
    }
    fixed = sum(list(terms.values())[:3])
    return terms, fixed + max(terms["LM-head backward"], terms["layer backward"])


def generation_kv_cache(config, sequences, tokens, activation_bytes):
    """Without vLLM, `generate()`'s KV cache: `sequences × tokens × L × 2 × kv_heads × head_dim × bytes`."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv = (config.get("num_key_value_heads") or config["num_attention_heads"]) * head_dim
    return sequences * tokens * config["num_hidden_layers"] * 2 * kv * activation_bytes


def usable_memory(capacity, vllm_fraction=0.0):
    """What a GPU of `capacity` bytes leaves to training: less colocated vLLM's share and `CUDA_OVERHEAD`."""
    return capacity * (1 - vllm_fraction) - CUDA_OVERHEAD


def longest_completion(config, sharding, world, step, budget):
    """The largest `completion_length` (a multiple of 256, at most the step's) whose micro-step peak fits `budget`."""
    low, high = 0, step.completion_length // 256
    while low < high:  # the peak grows with the length: bisect on multiples of 256
        middle = (low + high + 1) // 2
        _, peak = micro_step_memory(config, sharding, world, replace(step, completion_length=256 * middle))
        low, high = (middle, high) if peak <= budget else (low, middle - 1)
    return 256 * low


def settings_that_fit(config, sharding, world, step, budget):
    """
    `[(setting, peak)]`: one change at a time that lowers the micro-step peak, from the cheapest to the costliest,
    ending with the longest `max_completion_length` that fits `budget` with everything else unchanged.
    """
    tries = []
    if not step.gradient_checkpointing:
        tries.append(("gradient_checkpointing: true", sharding, replace(step, gradient_checkpointing=True)))
    if step.sequences > 1:
        setting = f"per_device_train_batch_size: 1 (gradient_accumulation_steps ×{step.sequences} keeps the step)"
        tries.append((setting, sharding, replace(step, sequences=1)))
    if sharding.zero_stage < 3 and world > 1:
        tries.append(("--config_file configs/accelerate/zero3.yaml", Sharding("ZeRO-3", 3), step))
    if not (sharding.offload_optimizer and sharding.offload_params):
        offload = Sharding("ZeRO-3 offload", 3, True, True)
        tries.append(("--config_file configs/accelerate/zero3_offload.yaml", offload, step))
    found = [(setting, micro_step_memory(config, shard, world, s)[1]) for setting, shard, s in tries]
    length = longest_completion(config, sharding, world, step, budget)
    longest = replace(step, completion_length=length)
    setting = f"max_completion_length: {length}" if length else "max_completion_length: none fits (even 0)"
    found.append((setting, micro_step_memory(config, sharding, world, longest)[1]))
    return found


def format_count(count):
    """A parameter count in billions, or in millions below 0.1B (`32.76B`, `494.03M`, `0.79M`), never `0.00B`."""
    if count >= 1e8:
        return f"{count / 1e9:.2f}B"
    return f"{count / 1e6:.2f}M"


def format_bytes(size):
    """A memory size in GiB, or MiB / KiB below one GiB (a tiny model's states are not "0.0 GiB")."""
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


def micro_step_of(args, max_prompt_length, per_device_train_batch_size):
    """The [`MicroStep`] of a training config (`GRPOConfig` fields, read by name) on a GPU."""
    half = 2 if args.bf16 or args.fp16 else 4
    return MicroStep(
        per_device_train_batch_size,
        max_prompt_length or 0,
        args.max_completion_length,
        args.gradient_checkpointing,
        activation_bytes=half,
        weight_bytes=half,
        lm_head_fp32=args.cast_lm_head_to_fp32,
    )


def recipe_terms(config, args, geometry, sharding, step):
    """`(terms, notes, peak)` of a recipe: the micro-step's terms, plus the reference model and `generate()`."""
    world = geometry.num_processes
    terms, peak = micro_step_memory(config, sharding, world, step)
    layers = config["num_hidden_layers"]
    gathered = " + gathered weights and grads" if gathered_layers(config, sharding, world, step) else ""
    notes = {
        "saved activations": f"input of each of {layers} layers"
        if step.gradient_checkpointing
        else f"every tensor of {layers} layers (no gradient checkpointing)",
        "LM-head backward": f"TRL's fused head; full logits would take {format_bytes(full_logits(config, step))}",
        "layer backward": "recomputed layer" + gathered,
    }
    if args.beta != 0:
        divisor = world if _sharded_parameters(sharding, world) else 1
        terms["reference model"] = step.weight_bytes * parameter_count(config) / divisor
        peak += terms["reference model"]
    if not args.use_vllm:
        sequences = geometry.per_device_train_batch_size * geometry.steps_per_generation
        cache = generation_kv_cache(config, sequences, step.tokens // step.sequences, step.activation_bytes)
        terms["generate() KV cache"] = cache
        notes["generate() KV cache"] = f"{sequences} sequences at once, another phase: max(this + state, step)"
        peak = max(peak, terms["weights + grads + AdamW states"] + cache)
    return terms, notes, peak


def memory_rows(model_name_or_path, args, max_prompt_length, geometry, sharding):
    """`fipo-trl check`'s memory lines: each term of a micro-step's peak per GPU, what fits 80 / 141 GB, and fixes."""
    config, source = model_shape(model_name_or_path)
    num_params = parameter_count(config) if config else None
    if num_params is None:
        return [f"  model: {model_name_or_path} (parameter count unknown: no memory estimate)"]
    world, step = geometry.num_processes, micro_step_of(args, max_prompt_length, geometry.per_device_train_batch_size)
    terms, notes, peak = recipe_terms(config, args, geometry, sharding, step)
    prompts = "" if max_prompt_length else " (prompts not counted: no max_prompt_length)"
    lines = [
        f"  model: {model_name_or_path}, {format_count(num_params)} parameters ({source})",
        f"  peak memory per GPU of one micro-step: {step.sequences} × {step.tokens // step.sequences:,} tokens"
        f"{prompts}, {'bf16' if step.activation_bytes == 2 else 'fp32'}, {sharding.label}",
    ]
    for name, size in terms.items():
        lines.append(f"    {name:<32} {format_bytes(size):>10}   {notes.get(name, '')}".rstrip())
    lines.append(f"    {'peak':<32} {format_bytes(peak):>10}   the first three + the larger backward")
    vllm = args.vllm_gpu_memory_utilization if args.use_vllm and args.vllm_mode == "colocate" else 0.0
    for gpu, capacity in GPU_SIZES.items():
        budget = usable_memory(capacity, vllm)
        spare = f"fits ({format_bytes(budget - peak)} to spare)"
        verdict = spare if peak <= budget else "does not fit; change one of:"
        lines.append(f"  {gpu}: {format_bytes(budget)} usable{' beside vLLM' if vllm else ''}, {verdict}")
        if peak > budget:
            lines += [
                f"    {setting}: peak {format_bytes(new)}{'' if new <= budget else ' (not enough alone)'}"
                for setting, new in settings_that_fit(config, sharding, world, step, budget)
            ]
    if sharding.offload_optimizer or sharding.offload_params:
        cpu = (OPTIM_BYTES + (WEIGHT_BYTES if sharding.offload_params else 0)) * num_params / geometry.num_nodes
        lines.append(f"  CPU RAM per node for offloaded states: {format_bytes(cpu)}")
    return lines
