"""The peak of one training micro-step per GPU (`fipo_trl.memory_estimate`), each term against a hand computation."""

import re
from dataclasses import replace

import pytest

from fipo_trl.memory_estimate import (
    GIB,
    GPU_SIZES,
    MicroStep,
    Sharding,
    full_logits,
    gathered_layers,
    gathered_lm_head,
    layer_activations,
    layer_parameter_count,
    lm_head_memory,
    longest_completion,
    micro_step_memory,
    model_shape,
    recomputed_layer,
    saved_activations,
    settings_that_fit,
    usable_memory,
    weight_casts,
)


QWEN_32B = model_shape("Qwen/Qwen2.5-32B")[0]
QWEN_7B = model_shape("Qwen/Qwen2.5-7B")[0]
OFFICIAL_STEP = MicroStep(sequences=1, prompt_length=2048, completion_length=20480)  # the 32B recipe, bf16
ZERO3 = Sharding("DeepSpeed ZeRO-3", 3)


def test_layer_activations_of_the_32b_layer_by_hand():
    # 16H + a(4H + 3q + 2kv + 7I) per token: H = q = 5120, kv = 8 × 128, I = 27648, a = 2
    per_token = 16 * 5120 + 2 * (4 * 5120 + 3 * 5120 + 2 * 1024 + 7 * 27648)
    assert per_token == 544_768
    assert layer_activations(QWEN_32B, OFFICIAL_STEP) == 22_528 * per_token
    assert recomputed_layer(QWEN_32B, OFFICIAL_STEP) == 22_528 * per_token
    assert recomputed_layer(QWEN_32B, replace(OFFICIAL_STEP, gradient_checkpointing=False)) == 0


def test_saved_activations_with_and_without_checkpointing():
    # checkpointed: one bf16 hidden state per layer and token, 64 × 22528 × 5120 × 2 = 13.75 GiB
    assert saved_activations(QWEN_32B, OFFICIAL_STEP) == 64 * 22_528 * 5120 * 2
    assert round(saved_activations(QWEN_32B, OFFICIAL_STEP) / GIB, 2) == 13.75
    everything = replace(OFFICIAL_STEP, gradient_checkpointing=False)
    assert saved_activations(QWEN_32B, everything) == 64 * 22_528 * 544_768


def test_fp32_weights_under_bf16_autocast_keep_a_bf16_copy_per_layer():
    assert weight_casts(QWEN_32B, OFFICIAL_STEP) == 0  # bf16 weights: nothing to cast
    autocast = replace(OFFICIAL_STEP, weight_bytes=4)
    assert weight_casts(QWEN_32B, autocast) == layer_parameter_count(QWEN_32B) * 2
    layer = layer_activations(QWEN_32B, autocast)
    assert layer == 22_528 * (544_768 + 4 * 5120 + 2 * (5120 + 1024))  # the norms' outputs, rotated q and k in fp32
    assert recomputed_layer(QWEN_32B, autocast) == layer + layer_parameter_count(QWEN_32B) * 2
    everything = replace(autocast, gradient_checkpointing=False)
    assert saved_activations(QWEN_32B, everything) == 64 * (layer + layer_parameter_count(QWEN_32B) * 2)


def test_fused_lm_head_holds_tiles_and_fp32_accumulators_not_the_logits():
    config = {"hidden_size": 8, "vocab_size": 40_000, "num_attention_heads": 2, "num_hidden_layers": 1}
    step = MicroStep(sequences=1, prompt_length=2, completion_length=5000)  # CUDA: 5000 completion tokens scored
    tile = 4096 * 32768 * 2
    hidden = 5000 * 8 * 2
    accumulators = 5000 * 8 * (4 + 2) + 40_000 * 8 * (4 + 2)
    assert lm_head_memory(config, step) == tile + hidden + accumulators
    # cast_lm_head_to_fp32: the tile and the hidden copy in fp32
    assert lm_head_memory(config, replace(step, lm_head_fp32=True)) == 2 * tile + 2 * hidden + accumulators
    # torch fallback (CPU): every position scored, 8 fp32 tiles more
    cpu = replace(step, triton=False)
    assert lm_head_memory(config, cpu) == tile + 8 * 4096 * 32768 * 4 + 5001 * 8 * 2 + 5001 * 8 * 6 + 40_000 * 8 * 6
    assert full_logits(config, step) == 5000 * 40_000 * (2 + 4 + 4)


def test_gathered_parameters_only_where_parameters_are_sharded():
    layer = layer_parameter_count(QWEN_32B)
    assert layer == 5120 * (5120 + 2 * 1024) + 5120 * 5120 + (5120 + 2 * 1024) + 3 * 5120 * 27648 + 2 * 5120
    assert gathered_layers(QWEN_32B, ZERO3, 128, OFFICIAL_STEP) == 3 * layer * 2
    assert gathered_lm_head(QWEN_32B, ZERO3, 128, OFFICIAL_STEP) == 152_064 * 5120 * 2
    for sharding, world in ((ZERO3, 1), (Sharding("DDP", 0), 8), (Sharding("ZeRO-2", 2), 8)):
        assert gathered_layers(QWEN_32B, sharding, world, OFFICIAL_STEP) == 0
        assert gathered_lm_head(QWEN_32B, sharding, world, OFFICIAL_STEP) == 0
    assert gathered_layers(QWEN_32B, Sharding("ZeRO-3 offload", 3, True, True), 1, OFFICIAL_STEP) == 3 * layer * 2


def test_peak_adds_the_larger_backward_phase_only():
    terms, peak = micro_step_memory(QWEN_32B, ZERO3, 128, OFFICIAL_STEP)
    state, saved, loss, head, layer = terms.values()
    assert peak == state + saved + loss + max(head, layer)
    assert loss == 32 * 20480 * 4
    # the 32B recipe per GPU (GiB): 3.8 state + 13.8 checkpoints + 14.2 layer backward (its larger phase) = 31.7
    rounded = {name: round(size / GIB, 1) for name, size in terms.items()}
    assert rounded == {
        "weights + grads + AdamW states": 3.8,
        "saved activations": 13.8,
        "loss tensors (fp32)": 0.0,
        "LM-head backward": 6.8,
        "layer backward": 14.2,
    }
    assert round(peak / GIB, 1) == 31.7


def test_settings_that_fit_an_80gb_gpu():
    # Qwen2.5-7B alone on one GPU, no checkpointing: 16 bytes/param (113 GiB) never fit 80 GB
    step = MicroStep(sequences=2, prompt_length=2048, completion_length=20480, gradient_checkpointing=False)
    single = Sharding("single process", 0)
    budget = usable_memory(GPU_SIZES["80 GB (H100, A100)"])
    assert budget == 80e9 - 2 * GIB
    _, peak = micro_step_memory(QWEN_7B, single, 1, step)
    assert peak > budget
    found = dict(settings_that_fit(QWEN_7B, single, 1, step, budget))
    assert list(found)[:3] == [
        "gradient_checkpointing: true",
        "per_device_train_batch_size: 1 (gradient_accumulation_steps ×2 keeps the step)",
        "--config_file configs/accelerate/zero3_offload.yaml",
    ]
    assert all(new < peak for new in found.values())  # each change lowers the peak
    assert found["gradient_checkpointing: true"] > budget  # but not enough alone: the states do not fit
    assert found["max_completion_length: none fits (even 0)"] > budget  # the states alone are too large


@pytest.mark.parametrize("capacity", [75 * GIB, 100 * GIB])
def test_longest_completion_is_the_last_that_fits(capacity):
    step = OFFICIAL_STEP
    length = longest_completion(QWEN_32B, ZERO3, 8, replace(step, completion_length=65536), capacity)
    assert 0 < length < 65536 and length % 256 == 0
    assert micro_step_memory(QWEN_32B, ZERO3, 8, replace(step, completion_length=length))[1] <= capacity
    assert micro_step_memory(QWEN_32B, ZERO3, 8, replace(step, completion_length=length + 256))[1] > capacity


def test_check_prints_each_term_the_peak_and_the_fixes(capsys):
    from fipo_trl.cli.check import cli

    recipe, zero3 = "configs/recipes/fipo_qwen2.5_32b.yaml", "configs/accelerate/zero3.yaml"
    assert cli([recipe, "--config_file", zero3, "--num_processes", "128", "--num_machines", "16"]) == 0
    out = capsys.readouterr().out
    for row in ("weights \\+ grads \\+ AdamW states +3\\.8 GiB", "saved activations +13\\.8 GiB", "peak +31\\.7 GiB"):
        assert re.search(row, out), out
    assert re.search(r"LM-head backward +6\.8 GiB +TRL's fused head; full logits would take 29\.0 GiB", out)
    assert "80 GB (H100, A100): 72.5 GiB usable, fits (40.8 GiB to spare)" in out
    # the same recipe on one GPU: 491 GiB of states fit nowhere, and the check says what to change
    assert cli([recipe, "--num_processes", "1"]) == 0
    out = capsys.readouterr().out
    assert "80 GB (H100, A100): 72.5 GiB usable, does not fit; change one of:" in out
    assert "--config_file configs/accelerate/zero3_offload.yaml: peak" in out
    assert "max_completion_length: none fits (even 0): peak" in out


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_part(tmp_path):
    # benchmarks/gpu_check.py --dry-run: every part's code path on CPU, so the GPU script cannot rot unseen
    import json
    import subprocess
    import sys

    command = [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--results", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parts = {part["part"]: part for part in json.loads((tmp_path / "dry_run_cpu.json").read_text())["parts"]}
    assert list(parts) == ["long 1.5b", "zero3", "fsdp2", "vllm", "long 7b", "future_sum"]
    for name in ("long 1.5b", "long 7b"):
        rows = parts[name]["rows"]
        assert [row["T"] for row in rows] == [256, 512, 640] and "status" not in parts[name]
        for row in rows:  # both trainers trained, and the measured peak sits beside the estimate
            assert row["FIPO peak MiB"] > 0 and row["DAPO peak MiB"] > 0 and row["estimate MiB"] > 0
            assert row["FIPO/DAPO time"] > 0
    assert {row["engine"] for row in parts["zero3"]["rows"]} == {"DeepSpeedEngine, ZeRO stage 3"}
    assert [row["trainer"] for row in parts["fsdp2"]["rows"]] == ["FIPO", "DAPO"]
    assert parts["vllm"]["status"] == "skipped: no CUDA"
    assert len(parts["future_sum"]["rows"]) == 4 and all(
        row["max abs err"] < 1e-2 for row in parts["future_sum"]["rows"]
    )
