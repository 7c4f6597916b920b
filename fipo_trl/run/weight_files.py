"""
Checks of a local model's weight files before the model is loaded: a corrupt file or NaN weights, named.

transformers reports a truncated `model.safetensors` as `SafetensorError: Error while deserializing header: incomplete
metadata, file not fully covered`, without the file, and loads weights full of NaN without a word (generation then
fails at the first sampling step, `probability tensor contains either inf, nan or element < 0`).
[`check_weight_files`] opens every safetensors file of a folder (safetensors validates the header and that the data
covers the file) and scans each floating-point tensor for NaN and inf, so both are refused with the file's path.
Only safetensors files are checked: reading a pickled `pytorch_model.bin` would mean unpickling it twice.
"""

import json
from pathlib import Path

from ..errors import UsageError


# scan tensors in pieces of this many elements, so that a large embedding needs no full-size boolean copy
_CHUNK = 1 << 24


def weight_files(model_dir: str | Path) -> list[Path]:
    """
    The safetensors files of a model folder: the shards its index lists, or the `*.safetensors` files in it.

    Raises:
        UsageError: when the index lists a shard that is not there.
    """
    model_dir = Path(model_dir)
    files = []
    for index in sorted(model_dir.glob("*.safetensors.index.json")):
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UsageError(f"{index}: not a valid safetensors index (no weight_map): save the model again") from None
        for shard in shards:
            if not (model_dir / shard).is_file():
                raise UsageError(
                    f"{model_dir / shard}: listed in {index.name} but missing: copy the whole model again"
                )
        files += [model_dir / shard for shard in shards]
    listed = set(files)
    return files + [path for path in sorted(model_dir.glob("*.safetensors")) if path not in listed]


def _num_non_finite(tensor) -> int:
    import torch

    # NaN and inf propagate through a sum, which runs ~30x faster on CPU than `isfinite` (measured in bf16); only a
    # non-finite sum (or a float16 sum that overflowed) is counted exactly
    if bool(torch.isfinite(tensor.sum())):
        return 0
    flat = tensor.reshape(-1)
    return sum(int((~torch.isfinite(chunk)).sum()) for chunk in flat.split(_CHUNK))


def check_weight_files(model_dir: str | Path, check_values: bool = True) -> None:
    """
    Refuse a model folder whose safetensors files cannot be read or hold NaN or inf weights.

    Args:
        model_dir (`str` or `Path`):
            A local model, adapter or `checkpoint-N` folder. Anything else (a Hub id) is not checked.
        check_values (`bool`, *optional*, defaults to `True`):
            Also scan every floating-point tensor for NaN/inf. This reads all the weights once (memory-mapped).

    Raises:
        UsageError: naming the file (and the tensor) that is truncated, corrupt or not finite.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    if not Path(model_dir).is_dir():
        return
    for path in weight_files(model_dir):
        try:
            with safe_open(str(path), framework="pt") as weights:
                for name in weights.keys() if check_values else ():
                    tensor = weights.get_tensor(name)
                    if not torch.is_floating_point(tensor):
                        continue
                    bad = _num_non_finite(tensor)
                    if bad:
                        raise UsageError(
                            f"{path}: tensor {name!r} has {bad} NaN/inf values of {tensor.numel()}: the weights are "
                            "broken (a diverged run?); load an earlier checkpoint or another model"
                        )
        except SafetensorError as exc:
            raise UsageError(
                f"{path}: cannot be read ({exc}): the file is truncated or corrupt; copy or save it again"
            ) from None
