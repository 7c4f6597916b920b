"""
FIPOTrainer in 2 real processes on CPU: DDP over gloo (torchrun), DeepSpeed ZeRO-2, ZeRO-3 that partitions, and FSDP2
(accelerate launch), each asserted for what its engine does to the parameters and equal in losses to DDP.

Launch lines exercised here, on a machine without a GPU:

    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port PORT SCRIPT   # FIPOConfig(use_cpu=True)
    DS_ACCELERATOR=cpu accelerate launch --config_file CONFIG --num_processes 2 --mixed_precision no SCRIPT
    # CONFIG: configs/accelerate/zero2.yaml, fsdp2.yaml, or zero3.yaml with a persistence threshold of 0

The accelerate runs build their config as `fipo-trl train` does (`fipo_trl.run.launch`). The test module is also
the worker script: `python tests/test_distributed.py MODEL_DIR OUT_DIR MODE`. The multi-node Slurm launcher is run
with stub `srun`/`vllm`/`accelerate` commands that log the command lines it builds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from torch.distributed.fsdp import FSDPModule
from transformers import TrainerCallback


ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 3  # generation at steps 0 and 2; step 1 trains on data generated before step 0's update
LAUNCH_TIMEOUT = 150  # seconds; a run takes ~20 s on 2 busy cores
LOGIT_SCALE, EOS_BIAS = 8.0, 2.0


def reward_digits(completions, **kwargs):
    """Deterministic and varied across a group, so that advantages are non-zero."""
    return [float(sum(ch.isalnum() for ch in c) % 5) for c in completions]


def worker(model_dir, out_dir, mode):
    """
    One process of the run: train `MAX_STEPS` steps, record every FIPO metric with the tensors it came from. `mode`:
    `ddp` (torchrun, `use_cpu`), `deepspeed` (accelerate launch with a ZeRO config) or `fsdp2` (accelerate launch with
    configs/accelerate/fsdp2.yaml); the last two set accelerate's state up as `fipo-trl train` does
    ([`fipo_trl.run.launch.configure_processes`]).
    """
    if mode == "deepspeed":
        import deepspeed.ops

        # Skip DeepSpeed's CPU shared-memory all-reduce, a C++ extension built on first use (60-90 s): gloo suffices
        deepspeed.ops.__compatible_ops__ = {**deepspeed.ops.__compatible_ops__, "deepspeed_shm_comm": False}

    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from fipo_trl import FIPOConfig, FIPOTrainer
    from fipo_trl.run.launch import configure_processes, launch_fields

    class RecordingFIPOTrainer(FIPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.records = []

        def _log_fipo_metrics(self, w, advantages, mask):
            super()._log_fipo_metrics(w, advantages, mask)
            logged = {k: v[-1] for k, v in self._metrics["train"].items() if k.startswith("fipo/")}
            tensors = {name: value.detach().cpu() for name, value in w._asdict().items()}
            self.records.append({**tensors, "advantages": advantages.cpu(), "mask": mask.cpu(), "logged": logged})

    config = FIPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=4,
        num_generations=4,
        gradient_accumulation_steps=1,
        steps_per_generation=2,
        max_completion_length=8,
        max_steps=MAX_STEPS,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="steps",
        save_steps=MAX_STEPS,
        report_to="none",
        bf16=False,
        # as the recipes run ZeRO and FSDP2; recomputing a layer in float32 gives the values of the DDP run's forward
        gradient_checkpointing=mode != "ddp",
        seed=0,
        **({"use_cpu": True} if mode == "ddp" else launch_fields()),  # as `fipo-trl train` builds its config
    )
    if mode != "ddp":
        configure_processes(config)
    # Loaded after FIPOConfig: under a ZeRO-3 launch with zero3_init_flag, from_pretrained builds it partitioned
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    loaded_partitioned = all(hasattr(p, "ds_tensor") for p in model.parameters())
    model.lm_head = sharp_head(model)
    dataset = Dataset.from_dict({"prompt": [f"What is {i} + {i}?" for i in range(32)]})
    trainer = RecordingFIPOTrainer(model, reward_funcs=reward_digits, args=config, train_dataset=dataset)
    from fipo_trl.run.checkpoints import CheckpointMarkerCallback

    trainer.add_callback(CheckpointMarkerCallback())  # as `fipo-trl train` adds it
    layout = ParameterLayoutCallback(trainer)
    trainer.add_callback(layout)
    trainer.train()

    rank = trainer.accelerator.process_index
    model = trainer.accelerator.unwrap_model(trainer.model)
    summary = {
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "engine": type(trainer.model_wrapped).__name__,
        "fsdp_module": isinstance(trainer.model_wrapped, FSDPModule),
        "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else 0,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        # ZeRO-3 keeps only this rank's shard in .data; the sum is compared across ranks only without ZeRO-3
        "param_sum": float(sum(p.detach().double().sum() for p in model.parameters())),
        "loaded_partitioned": loaded_partitioned,
        "layouts": layout.layouts,
        "parts": layout.parts(),
        "generate_calls": count_generate_calls(trainer, model),
    }
    # a gloo group still alive at interpreter exit can abort the process (SIGABRT, "terminate called without an
    # active exception") while its worker threads release tensors: end it, as `fipo-trl train` does
    trainer.end()
    summary["process_group_ended"] = not torch.distributed.is_initialized()
    torch.save({"records": trainer.records, "summary": summary}, Path(out_dir) / f"rank{rank}.pt")


def sharp_head(model):
    """
    A head with sharper, context-dependent logits plus an EOS bias: completions end at lengths that differ between
    ranks (which share one sampling seed), so a token-weighted reduction differs from a mean of per-rank means. Under
    ZeRO-3 the loaded head is partitioned: it is gathered to be copied, and DeepSpeed partitions the new one.
    """
    import contextlib

    weight = model.lm_head.weight
    gathered = contextlib.nullcontext()
    if hasattr(weight, "ds_tensor"):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters([weight])
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with gathered, torch.no_grad():
        if not weight.is_meta:  # FSDP's RAM-efficient loading: only rank 0 loads, the others receive its weights
            head.weight.copy_(weight * LOGIT_SCALE)
    head.bias.data.zero_()
    head.bias.data[model.config.eos_token_id] = EOS_BIAS
    return head


class ParameterLayoutCallback(TrainerCallback):
    """
    At every step end, how each parameter is held on this process: ZeRO-3's partition (`ds_tensor`) and what is left
    in `.data`, or FSDP2's DTensor placements and local shard.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.layouts = []

    def named_parameters(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model_wrapped).named_parameters()

    def on_step_end(self, args, state, control, **kwargs):
        layout = {}
        for name, param in self.named_parameters():
            entry = {"numel": param.numel(), "data_numel": param.data.numel()}
            if hasattr(param, "ds_tensor"):
                entry.update(ds_numel=param.ds_numel, partition_numel=param.ds_tensor.numel())
            if hasattr(param, "placements"):  # a DTensor
                entry.update(placements=[str(p) for p in param.placements], local_numel=param.to_local().numel())
            layout[name] = entry
        self.layouts.append(layout)

    def parts(self):
        """This process's part of every parameter, flat (its ZeRO-3 partition or FSDP2 shard), after training."""
        parts = {}
        for name, param in self.named_parameters():
            if hasattr(param, "ds_tensor"):
                parts[name] = param.ds_tensor.detach().float().cpu().clone()
            elif hasattr(param, "placements"):
                parts[name] = param.to_local().detach().float().cpu().flatten().clone()
        return parts


def count_generate_calls(trainer, model):
    """
    The held-out sampling path of `fipo-trl train` on 5 prompts (shares of 3 and 2, padded to 3 each): how many
    `generate` calls this process made. Under ZeRO-3 every call gathers weights from every process.
    """
    from fipo_trl.evaluation.generation import Sampling, generate_on_processes

    calls = []
    generate = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(1)
        return generate(*args, **kwargs)

    model.generate = counting_generate
    tokenizer = trainer.processing_class
    prompts = [f"What is {i} + 1?" for i in range(5)]
    indices, _ = generate_on_processes(
        trainer.model_wrapped, tokenizer, prompts, Sampling(max_tokens=4), 1, accelerator=trainer.accelerator
    )
    model.generate = generate
    return {"calls": len(calls), "indices": indices}


def launch(command, out_dir):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # two processes on two cores: no oversubscription
        "CUDA_VISIBLE_DEVICES": "",
        "DS_ACCELERATOR": "cpu",  # DeepSpeed's own device detection, which would otherwise fail without CUDA
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    }
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stderr[-4000:]}"
    return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


def launch_torchrun(model_dir, out_dir):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    return launch([*command, __file__, model_dir, str(out_dir), "ddp"], out_dir)


def launch_accelerate(model_dir, out_dir, accelerate_config, mode="deepspeed"):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config]
    command += ["--num_processes", "2", "--mixed_precision", "no"]
    command += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    return launch([*command, __file__, model_dir, str(out_dir), mode], out_dir)


def partitioning_zero3_config(folder):
    """
    configs/accelerate/zero3.yaml with a DeepSpeed file whose persistence threshold is 0. DeepSpeed keeps whole on
    every rank each parameter below the threshold (default 1e5 elements; the recipes' "auto" is 10 × hidden size):
    every parameter of the tiny model, which would then train exactly as under ZeRO-2.
    """
    import yaml

    ds_config = {
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "bf16": {"enabled": "auto"},
    }
    (folder / "ds_zero3.json").write_text(json.dumps(ds_config))
    accelerate = yaml.safe_load((ROOT / "configs/accelerate/zero3.yaml").read_text())
    accelerate["deepspeed_config"] = {
        "deepspeed_config_file": str(folder / "ds_zero3.json"),
        "zero3_init_flag": True,
        "deepspeed_multinode_launcher": "standard",
    }
    del accelerate["mixed_precision"]  # the DeepSpeed file carries it
    (folder / "zero3.yaml").write_text(yaml.safe_dump(accelerate))
    return str(folder / "zero3.yaml")


def pad_cat(tensors):
    """Concatenate per-rank `(B, T_rank)` tensors along the batch, right-padding T with zeros (masked out)."""
    width = max(t.size(-1) for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.size(-1))) for t in tensors])


@pytest.fixture(scope="module")
def ddp_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    return launch_torchrun(tiny_model_dir, out), out


@pytest.mark.slow  # 2 processes
def test_ddp_both_ranks_train_in_sync(ddp_run):
    ranks, _ = ddp_run
    summaries = [r["summary"] for r in ranks]
    assert [s["num_processes"] for s in summaries] == [2, 2]
    assert summaries[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    # One loss-metric call per micro-step on each rank, and identical weights after DDP's all-reduced updates
    assert [len(r["records"]) for r in ranks] == [MAX_STEPS, MAX_STEPS]
    assert summaries[0]["param_sum"] == pytest.approx(summaries[1]["param_sum"], rel=1e-12)
    assert len(summaries[0]["losses"]) == MAX_STEPS
    assert all(s["process_group_ended"] for s in summaries)


@pytest.mark.slow  # 2 processes
def test_ddp_fipo_metrics_equal_single_process_computation_on_both_ranks_data(ddp_run):
    assert_metrics_are_the_single_process_computation(ddp_run[0])


def assert_metrics_are_the_single_process_computation(ranks):
    """Each step's logged fipo/* metrics equal fipo_diagnostics on both ranks' tensors merged, as one process."""
    from fipo_trl.core import FIPOWeights, weight_bounds
    from fipo_trl.diagnostics import fipo_diagnostics

    off_policy_seen = False
    for step in range(MAX_STEPS):
        records = [r["records"][step] for r in ranks]
        assert records[0]["logged"] == records[1]["logged"]  # every rank logs the reduced value
        merged = {name: pad_cat([r[name] for r in records]) for name in FIPOWeights._fields if name != "keep"}
        w = FIPOWeights(**merged, keep=torch.cat([r["keep"] for r in records]))
        advantages, mask = torch.cat([r["advantages"] for r in records]), pad_cat([r["mask"] for r in records])
        # FIPOConfig defaults: ε_f 0.2, clip-high-only, c = 10
        single = fipo_diagnostics(w, advantages, mask, weight_bounds=weight_bounds(0.2, True), dual_clip_ratio=10.0)
        logged = records[0]["logged"]
        for name, (total, count) in single.sums.items():
            assert logged[f"fipo/{name}"] == pytest.approx((total / count).item(), rel=1e-5, abs=1e-7), name
        for name, value in {**single.minima, **single.maxima}.items():
            expected = value.item() if value.isfinite() else float("nan")
            assert logged[f"fipo/{name}"] == pytest.approx(expected, rel=1e-6, nan_ok=True), name
        if logged["fipo/abs_log_ratio_mean"] > 0:
            off_policy_seen = True
            # Unequal token counts: the token-weighted mean is neither rank's value nor the mean of the two
            local = [
                fipo_diagnostics(
                    FIPOWeights(**{name: r[name] for name in FIPOWeights._fields}),
                    r["advantages"],
                    r["mask"],
                    weight_bounds=weight_bounds(0.2, True),
                    dual_clip_ratio=10.0,
                ).sums["abs_log_ratio_mean"]
                for r in records
            ]
            assert local[0][1] != local[1][1], "equal token counts on both ranks: the check below cannot discriminate"
            per_rank = [(total / count).item() for total, count in local]
            for wrong in (*per_rank, sum(per_rank) / 2):
                assert logged["fipo/abs_log_ratio_mean"] != pytest.approx(wrong, rel=1e-6)
    assert off_policy_seen, "no off-policy micro-step: steps_per_generation=2 should make step 1 stale"


@pytest.mark.slow  # 2 processes
def test_ddp_checkpoint_is_written_once(ddp_run):
    _, out = ddp_run
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == [f"checkpoint-{MAX_STEPS}"]
    files = sorted(p.name for p in (out / f"checkpoint-{MAX_STEPS}").iterdir())
    assert files.count("model.safetensors") == 1 and "trainer_state.json" in files
    # Each rank saves only its RNG state; the weights and optimizer are written by the main process alone
    assert [f for f in files if f.startswith("rng_state")] == ["rng_state_0.pth", "rng_state_1.pth"]
    state = json.loads((out / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    # the completion marker, written once both ranks had saved, lists the other rank's RNG state at its full size
    from fipo_trl.run.checkpoints import MARKER_NAME, incomplete_reason

    marker = json.loads((out / f"checkpoint-{MAX_STEPS}" / MARKER_NAME).read_text())["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "model.safetensors"} <= set(marker)
    assert incomplete_reason(out / f"checkpoint-{MAX_STEPS}", marker_required=True) is None


# Same data, same seeds, same AdamW as the DDP run: only the order of float32 sums differs (DeepSpeed and FSDP
# reduce-scatter gradients in buckets where DDP all-reduces them), a few ulps that 3 Adam steps at lr 0.05 carry into
# the losses: measured 2.6e-7 relative at most (ZeRO-2), 1.3e-7 (ZeRO-3), 0 (FSDP2); asserted within 1e-5
LOSS_TOLERANCE = {"rel": 1e-5, "abs": 1e-7}


@pytest.mark.slow  # 2 processes
def test_deepspeed_zero2_two_processes_on_cpu_matches_ddp(ddp_run, tiny_model_dir, tmp_path):
    ranks = launch_accelerate(tiny_model_dir, tmp_path, "configs/accelerate/zero2.yaml")
    summaries = [r["summary"] for r in ranks]
    for summary in summaries:
        assert summary["num_processes"] == 2
        assert (summary["engine"], summary["zero_stage"]) == ("DeepSpeedEngine", 2)
        assert summary["process_group_ended"]
    assert [len(r["records"]) for r in ranks] == [MAX_STEPS, MAX_STEPS]
    assert summaries[0]["losses"] == pytest.approx(ddp_run[0][0]["summary"]["losses"], **LOSS_TOLERANCE)
    checkpoint = tmp_path / f"checkpoint-{MAX_STEPS}"
    assert (checkpoint / "model.safetensors").is_file()
    shards = sorted(p.name for p in checkpoint.glob(f"global_step{MAX_STEPS}/*optim_states.pt"))
    assert len(shards) == 2  # one optimizer shard per rank


@pytest.fixture(scope="module")
def zero3_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3")
    return launch_accelerate(tiny_model_dir, out, partitioning_zero3_config(out)), out


@pytest.mark.slow  # 2 processes
def test_zero3_loads_partitioned_and_keeps_each_rank_its_own_part_between_steps(zero3_run):
    from safetensors.torch import load_file

    ranks, out = zero3_run
    summaries = [r["summary"] for r in ranks]
    for summary in summaries:
        assert summary["num_processes"] == 2
        assert (summary["engine"], summary["zero_stage"]) == ("DeepSpeedEngine", 3)
        assert summary["loaded_partitioned"]  # zero3_init_flag: from_pretrained built every parameter partitioned
        assert len(summary["layouts"]) == MAX_STEPS
        for layout in summary["layouts"]:  # at every step end: this rank's half, no whole copy
            for name, entry in layout.items():
                assert entry["data_numel"] == entry["numel"] == 0, name  # numel() of a partitioned parameter is 0
                assert entry["partition_numel"] == -(-entry["ds_numel"] // 2), name
    # the two parts of each parameter are its two halves (rank 1's padded), together the saved, gathered weights
    saved = load_file(out / f"checkpoint-{MAX_STEPS}" / "model.safetensors")
    parts = [s["parts"] for s in summaries]
    assert parts[0].keys() == parts[1].keys() == saved.keys()
    for name, weight in saved.items():
        assert torch.equal(torch.cat([parts[0][name], parts[1][name]])[: weight.numel()], weight.flatten()), name
    assert not torch.equal(*(torch.cat(list(p.values())) for p in parts))  # each rank holds something else


@pytest.mark.slow  # 2 processes
def test_zero3_partitioned_trains_as_ddp_with_the_single_process_metrics(zero3_run, ddp_run):
    ranks, _ = zero3_run
    assert ranks[0]["summary"]["losses"] == pytest.approx(ddp_run[0][0]["summary"]["losses"], **LOSS_TOLERANCE)
    assert_metrics_are_the_single_process_computation(ranks)


@pytest.mark.slow  # 2 processes
def test_zero3_sampling_makes_the_same_number_of_generate_calls_on_both_ranks(zero3_run):
    # 5 prompts: shares of 3 and 2, the short one padded with its last prompt; each call gathers from both ranks
    calls = [r["summary"]["generate_calls"] for r in zero3_run[0]]
    assert [c["calls"] for c in calls] == [3, 3]
    assert [c["indices"] for c in calls] == [[0, 1, 2], [3, 4, 4]]


@pytest.mark.slow  # 2 processes
def test_fsdp2_shards_every_parameter_and_trains_as_ddp(ddp_run, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    ranks = launch_accelerate(tiny_model_dir, tmp_path, "configs/accelerate/fsdp2.yaml", mode="fsdp2")
    summaries = [r["summary"] for r in ranks]
    for summary in summaries:
        assert summary["num_processes"] == 2 and summary["distributed_type"] == "DistributedType.FSDP"
        assert summary["fsdp_module"]  # fully_shard'ed: the model's class is FSDP2's FSDPModule subclass
        assert summary["process_group_ended"]
        assert len(summary["layouts"]) == MAX_STEPS
        for layout in summary["layouts"]:  # every parameter a DTensor sharded on dim 0, this rank's rows local
            for name, entry in layout.items():
                assert entry["placements"] == ["S(0)"], name  # Shard(dim=0)
                assert entry["local_numel"] < entry["numel"], name
    saved = load_file(tmp_path / f"checkpoint-{MAX_STEPS}" / "model.safetensors")  # FULL_STATE_DICT: gathered
    parts = [s["parts"] for s in summaries]
    assert parts[0].keys() == parts[1].keys() == saved.keys()
    for name, weight in saved.items():
        assert torch.equal(torch.cat([parts[0][name], parts[1][name]]), weight.flatten()), name
    assert summaries[0]["losses"] == pytest.approx(ddp_run[0][0]["summary"]["losses"], **LOSS_TOLERANCE)
    assert_metrics_are_the_single_process_computation(ranks)


SLURM_STUBS = {
    "scontrol": 'printf "node%d\\n" $(seq 0 2)',  # a 3-node allocation
    # Run the step's command once per task, with SLURM_PROCID and --export applied, after logging the step
    "srun": """echo "srun $*" >> "$STUB_LOG"; ntasks=1
while [[ $1 == --* ]]; do case $1 in --ntasks) ntasks=$2; shift 2;; --export) export "${2#ALL,}"; shift 2;;
  --ntasks-per-node|--nodes|--nodelist) shift 2;; *) shift;; esac; done
for ((i = 0; i < ntasks; i++)); do SLURM_PROCID=$i "$@"; done""",
    "vllm": 'echo "vllm $* DEV_MODE=${VLLM_SERVER_DEV_MODE:-}" >> "$STUB_LOG"',
    "accelerate": 'echo "accelerate $*" >> "$STUB_LOG"',
    "curl": "exit 0",
}


def run_slurm_script(folder, *args):
    """Run the sbatch script on a fake 3-node allocation; return the result and the logged command lines."""
    for name, body in SLURM_STUBS.items():
        (folder / name).write_text(f"#!/bin/bash\n{body}\n")
        (folder / name).chmod(0o755)
    log = folder / "calls.log"
    env = {**os.environ, "PATH": f"{folder}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.update({"SLURM_JOB_NODELIST": "node[0-2]", "STUB_LOG": str(log)})
    script = ["bash", "scripts/slurm/fipo_multinode.sbatch", "configs/recipes/fipo_qwen2.5_32b.yaml", *args]
    result = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    return result, log.read_text().splitlines() if log.exists() else []


@pytest.mark.slow  # the launcher starts a python process per step: ~11 s each on 2 busy cores
def test_slurm_script_puts_vllm_on_first_node_and_ranks_the_others(tmp_path):
    # Slurm, vLLM and accelerate are stubs that log their command lines; fipo-trl check runs for real
    overrides = ["--gradient_accumulation_steps", "64", "--steps_per_generation", "512"]  # 16 processes, 1024/step
    result, calls = run_slurm_script(tmp_path, *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "completions per optimizer step         1024" in result.stdout  # the check ran on 16 processes
    vllm = next(line for line in calls if line.startswith("vllm serve"))
    assert "Qwen/Qwen2.5-32B" in vllm and "--max-model-len 22528" in vllm and "DEV_MODE=1" in vllm
    assert "--weight-transfer-config" in vllm and "--logprobs-mode processed_logprobs" in vllm
    launches = [line for line in calls if line.startswith("accelerate launch")]
    assert len(launches) == 2
    for rank, line in enumerate(launches):
        assert f"--num_machines 2 --num_processes 16 --machine_rank {rank} --main_process_ip node1" in line
        assert line.endswith(f"--vllm_server_host node0 --vllm_server_port 8000 {' '.join(overrides)}")


@pytest.mark.slow  # the launcher starts a python process per step: ~11 s each on 2 busy cores
def test_slurm_script_refuses_an_impossible_recipe_before_starting_anything(tmp_path):
    # 1 per device × 16 processes × 64 steps = 1024 completions: not whole groups of 48
    result, calls = run_slurm_script(tmp_path, "--num_generations", "48")
    assert result.returncode == 2
    assert "not divisible by num_generations=48" in result.stderr
    assert calls == []  # no srun step, no server, no training launched


if __name__ == "__main__":
    worker(*sys.argv[1:])
    # the results are written: leave without interpreter teardown, where the gloo group that DDP's wrapper still holds
    # is destroyed in arbitrary order and can abort the process (SIGABRT, "terminate called without an active
    # exception"; seen in a CI run after both ranks had written their results)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
