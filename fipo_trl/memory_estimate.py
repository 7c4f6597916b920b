"""
Memory per GPU of a recipe at scale, without loading a model: parameter counts from a model's config or Qwen2.5's
published shapes, and the per-GPU memory of weights, gradients and AdamW states under ZeRO / FSDP.
"""

import json
import re
from dataclasses import dataclass
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


def parameter_count(config):
    """
    Parameters of a Qwen2/Llama-style decoder from its `config.json` mapping, or `None` if a shape is missing.

    Counts embeddings, attention (with Qwen2's q/k/v biases), the gated MLP, the norms and an untied LM head.
    """
    try:
        hidden, inter = config["hidden_size"], config["intermediate_size"]
        layers, heads, vocab = config["num_hidden_layers"], config["num_attention_heads"], config["vocab_size"]
    except KeyError:
        return None
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    qkv_bias = config.get("attention_bias", config.get("model_type") == "qwen2")
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * (q + 2 * kv) + q * hidden + (q + 2 * kv if qkv_bias else 0)
    per_layer = attention + 3 * hidden * inter + 2 * hidden
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
