"""Peak memory growth of a block of CPU code, from the kernel's own high-water mark (Linux).

glibc keeps freed memory in its heap, where the resident-set peak cannot see reuse; with a low mmap threshold every
tensor-sized allocation is mapped and unmapped, so VmHWM follows live memory. `ensure_exact_peaks()` re-executes the
script with that setting; `/proc/self/clear_refs` resets the high-water mark before each measurement.
"""

import contextlib
import os
import sys


def ensure_exact_peaks():
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})


def _status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


@contextlib.contextmanager
def peak_growth():
    """Yields a dict whose "mib" is, on exit, the peak resident growth (MiB) over the block."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident size
    base, result = _status_kib("VmRSS"), {}
    yield result
    result["mib"] = (_status_kib("VmHWM") - base) / 1024


@contextlib.contextmanager
def saved_tensor_bytes(module):
    """
    Yields a dict filled on exit with the bytes autograd saves for the backward inside the block: `"activations"`
    and `"weight_casts"` (copies of `module`'s weights, e.g. bf16 casts under autocast); the weights themselves and
    tensors saved twice count once.
    """
    import torch

    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    shapes = {tuple(p.shape) for p in module.parameters()}
    seen, result = {}, {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = (storage.nbytes(), tuple(tensor.shape) in shapes)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield result
    result["activations"] = sum(size for size, is_weight in seen.values() if not is_weight)
    result["weight_casts"] = sum(size for size, is_weight in seen.values() if is_weight)


def compare_layer_estimate(sizes=("1.5b", "7b"), tokens=500):
    """Bytes per token one Qwen2.5 decoder layer saves for its backward vs `memory_estimate`'s terms (CPU)."""
    import torch
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

    from fipo_trl.memory_estimate import MicroStep, layer_activations, model_shape, weight_casts

    variants = (("bf16 autocast, fp32 weights", 2, 4), ("fp32", 4, 4), ("bf16 weights", 2, 2))
    for size in sizes:
        shape = model_shape(f"Qwen2.5-{size}")[0]
        config = Qwen2Config(**{k: v for k, v in shape.items() if k != "model_type"}, attn_implementation="sdpa")
        rotary = Qwen2RotaryEmbedding(config)
        for label, compute, weight in variants:
            layer = Qwen2DecoderLayer(config, 0).to(torch.bfloat16 if weight == 2 else torch.float32)
            dtype = torch.bfloat16 if compute == 2 else torch.float32
            hidden = torch.randn(
                1, tokens, config.hidden_size, dtype=next(layer.parameters()).dtype, requires_grad=True
            )
            positions = torch.arange(tokens)[None]
            with torch.autocast("cpu", dtype=dtype, enabled=compute < weight):
                with saved_tensor_bytes(layer) as saved:
                    layer(hidden, position_embeddings=rotary(hidden, positions), position_ids=positions)
            step = MicroStep(1, 0, tokens, activation_bytes=compute, weight_bytes=weight)
            inter, width = shape["intermediate_size"], shape["hidden_size"]
            in_flight = tokens * compute * (3 * inter + 2 * width)  # gradients, not saved tensors
            estimate = (layer_activations(shape, step) - in_flight) / tokens
            measured = saved["activations"] / tokens
            print(
                f"Qwen2.5-{size} layer, {label}: saved {measured:,.0f} B/token (estimate {estimate:,.0f}),"
                f" weight casts {saved['weight_casts'] / MIB:.1f} MiB (estimate {weight_casts(shape, step) / MIB:.1f})"
            )


MIB = 1024**2

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    compare_layer_estimate()
