"""
What a recipe implies at scale, without loading a model: the batch geometry for N processes with TRL 1.16's rules
(`GRPOConfig.__post_init__`), parameter counts from a model's config or Qwen2.5's published shapes, the sharding
of an accelerate config, and the per-GPU memory of weights, gradients and AdamW states under ZeRO/FSDP. The
`fipo-trl check` command prints these (`fipo_trl.scripts.check`).
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .config import default_steps_per_generation, is_on_policy
from .errors import UsageError
from .run.preflight import read_yaml_file


GEOMETRY_FIELDS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "generation_batch_size",
    "num_generations",
    "num_iterations",
)

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


@dataclass
class Geometry:
    """Batch geometry of one run, in TRL's units (completions) unless the name says prompts."""

    num_processes: int
    num_nodes: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    num_generations: int
    num_iterations: int

    @property
    def completions_per_generation(self):
        return self.per_device_train_batch_size * self.num_processes * self.steps_per_generation

    @property
    def prompts_per_generation(self):
        return self.completions_per_generation // self.num_generations

    @property
    def completions_per_step(self):
        return self.per_device_train_batch_size * self.num_processes * self.gradient_accumulation_steps

    @property
    def steps_per_generation_batch(self):
        # Optimizer steps fed by one generation batch over all its passes (a fraction if one batch is < one step)
        return self.steps_per_generation * self.num_iterations / self.gradient_accumulation_steps

    @property
    def off_policy_steps(self):
        """`(stale, total)` optimizer steps over one period of the schedule: steps that see data generated before an
        earlier optimizer step (FIPO weights can differ from 1 there) and all steps."""
        accumulation, block = self.gradient_accumulation_steps, self.steps_per_generation * self.num_iterations
        period = math.lcm(block, accumulation)
        stale = {s // accumulation for s in range(period) if s // accumulation > (s - s % block) // accumulation}
        return len(stale), period // accumulation

    @property
    def off_policy(self):
        # TRL's own test for computing old log-probs (docs/trl.md §3): otherwise log π_θ = log π_old and FIPO = DAPO
        return not is_on_policy(self.gradient_accumulation_steps, self.steps_per_generation, self.num_iterations)


def resolve_geometry(raw, num_processes, num_nodes=1):
    """
    Resolve the batch geometry of `raw` recipe fields for `num_processes` training processes (TRL 1.16 rules).

    Args:
        raw (`dict`): the recipe's geometry fields (see `GEOMETRY_FIELDS`), missing ones filled with FIPOConfig's
            defaults; `steps_per_generation` and `generation_batch_size` may be `None`.
        num_processes (`int`): training processes in total, over all nodes.
        num_nodes (`int`): machines; `num_processes` must split evenly over them.

    Raises:
        UsageError: when TRL would refuse the configuration at this world size.
    """
    if num_processes < 1 or num_nodes < 1 or num_processes % num_nodes:
        raise UsageError(f"--num_processes {num_processes} does not split evenly over --num_machines {num_nodes}")
    per_device, accumulation = raw["per_device_train_batch_size"], raw["gradient_accumulation_steps"]
    steps, generation_batch = raw["steps_per_generation"], raw["generation_batch_size"]
    num_generations, num_iterations = raw["num_generations"], raw["num_iterations"]
    if min(per_device, accumulation, num_iterations) < 1:
        raise UsageError("per_device_train_batch_size, gradient_accumulation_steps and num_iterations must be >= 1")
    if num_generations < 2:
        raise UsageError(f"num_generations={num_generations}: GRPO/FIPO needs at least 2 completions per prompt")
    global_batch = per_device * num_processes
    if steps is not None and generation_batch is not None:
        raise UsageError("steps_per_generation and generation_batch_size are both set: TRL accepts only one of them")
    if generation_batch is not None:
        if generation_batch % global_batch:
            raise UsageError(
                f"generation_batch_size={generation_batch} is not divisible by per_device_train_batch_size × "
                f"processes = {per_device} × {num_processes} = {global_batch}"
            )
        steps = generation_batch // global_batch
    elif steps is None:
        steps = default_steps_per_generation(accumulation)
    geometry = Geometry(num_processes, num_nodes, per_device, accumulation, steps, num_generations, num_iterations)
    if geometry.completions_per_generation % num_generations:
        raise UsageError(
            f"a generation batch of {geometry.completions_per_generation} completions ({per_device} per device × "
            f"{num_processes} processes × {steps} steps_per_generation) is not divisible by num_generations="
            f"{num_generations}: TRL needs whole prompt groups"
        )
    return geometry


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


def read_accelerate_config(path):
    """The [`Sharding`] of an accelerate config (YAML), following its `deepspeed_config_file` if it has one."""
    config = read_yaml_file(path, what="accelerate config")
    kind = str(config.get("distributed_type", "NO"))
    counts = {"num_processes": config.get("num_processes"), "num_machines": config.get("num_machines")}
    if kind == "DEEPSPEED":
        ds = config.get("deepspeed_config", {})
        if "deepspeed_config_file" in ds:
            zero = json.loads(Path(ds["deepspeed_config_file"]).read_text()).get("zero_optimization", {})
            stage = int(zero.get("stage", 0))
            optimizer = zero.get("offload_optimizer", {}).get("device", "none")
            params = zero.get("offload_param", {}).get("device", "none")
        else:
            stage = int(ds.get("zero_stage", 0))
            optimizer, params = ds.get("offload_optimizer_device", "none"), ds.get("offload_param_device", "none")
        offload = (optimizer not in ("none", None), params not in ("none", None))
        suffix = " + CPU offload" if any(offload) else ""
        return Sharding(f"DeepSpeed ZeRO-{stage}{suffix}", stage, *offload, **counts)
    if kind == "FSDP":
        fsdp = config.get("fsdp_config", {})
        offload = bool(fsdp.get("fsdp_offload_params", False))
        label = f"FSDP{fsdp.get('fsdp_version', 1)} full shard" + (" + CPU offload" if offload else "")
        return Sharding(label, 3, offload, offload, **counts)
    label = "DDP (replicated)" if kind == "MULTI_GPU" else "single process"
    return Sharding(label, 0, **counts)


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
