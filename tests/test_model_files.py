"""Weight files are checked before a model loads: a truncated or corrupt file, or NaN weights, is named."""

import json

import pytest
import torch
from safetensors.torch import save_file

from fipo_trl.errors import UsageError
from fipo_trl.run.weight_files import check_weight_files, weight_files


def write_weights(folder, name="model.safetensors", **tensors):
    folder.mkdir(exist_ok=True)
    tensors = tensors or {"embed.weight": torch.randn(8, 4), "positions": torch.arange(4)}
    save_file(tensors, str(folder / name))
    return folder / name


def test_sound_weights_pass(tmp_path):
    write_weights(tmp_path / "model")
    check_weight_files(tmp_path / "model")
    check_weight_files("Qwen/Qwen2.5-7B")  # not a local folder: left to from_pretrained


def test_truncated_file_is_named(tmp_path):
    path = write_weights(tmp_path / "model")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UsageError, match=r"model\.safetensors: cannot be read .*truncated or corrupt"):
        check_weight_files(tmp_path / "model")


def test_garbage_file_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    with pytest.raises(UsageError, match=str(tmp_path / "model.safetensors")):
        check_weight_files(tmp_path, check_values=False)  # the header is checked even without the value scan


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path, bad):
    weights = torch.randn(8, 4)
    weights[3, 1] = bad
    write_weights(tmp_path, "adapter_model.safetensors", **{"lora_A.weight": weights, "ids": torch.arange(3)})
    message = r"adapter_model\.safetensors: tensor 'lora_A\.weight' has 1 NaN/inf values of 32"
    with pytest.raises(UsageError, match=message):
        check_weight_files(tmp_path)
    check_weight_files(tmp_path, check_values=False)


def test_sharded_model_checks_the_shards_its_index_lists(tmp_path):
    write_weights(tmp_path, "model-00001-of-00002.safetensors", a=torch.zeros(2))
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    index = {"metadata": {}, "weight_map": shards}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match=r"00002-of-00002\.safetensors: listed in model\.safetensors\.index\.json"):
        check_weight_files(tmp_path)
    write_weights(tmp_path, "model-00002-of-00002.safetensors", b=torch.tensor([float("nan")]))
    assert [path.name for path in weight_files(tmp_path)] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    with pytest.raises(UsageError, match="00002-of-00002.safetensors: tensor 'b'"):
        check_weight_files(tmp_path)


def test_large_finite_float16_weights_pass(tmp_path):
    # their float16 sum overflows to inf (the fast screen fires), but no value is NaN or inf
    write_weights(tmp_path, big=torch.full((4,), 60000.0, dtype=torch.float16))
    check_weight_files(tmp_path)
