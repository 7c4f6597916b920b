"""
How many processes a run trains on and under which engine: read from the launcher, made true without a GPU.

`accelerate launch` and `torchrun` say what they started in the environment (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`,
`MASTER_ADDR`, `ACCELERATE_USE_DEEPSPEED`, `ACCELERATE_USE_FSDP`, ...). On a GPU machine accelerate turns that into a
process group and an engine by itself. Without a GPU, accelerate 1.16 picks no backend: DeepSpeed then sees 2
processes while the trainer counts 1 (`Check batch related parameters ... 32 != 32 * 1 * 2`), `--multi_gpu` starts
processes that each train alone as rank 0 of 1, and FSDP is enabled only for GPU-type backends, so an FSDP launch
trains as plain DDP. Built with [`launch_fields`] and finished by [`configure_processes`] before the trainer, the
config of every one of these launches trains on all its processes under the engine it asked for (gloo connects
them); the launch that starts one process where several were asked for is refused in one line ([`check_launch`]),
and the run says what it trains on (docs/scaling.md, "CPU").
"""

import json
import os
from pathlib import Path

from ..errors import UsageError


LAUNCH_LINE = (
    "accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 2 -m fipo_trl train RECIPE"
)


def launched_processes() -> int:
    """The number of processes the launcher started (`WORLD_SIZE`; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def requested_engine() -> str:
    """The engine the launcher's environment asks for: `DeepSpeed ZeRO-n`, `FSDP2` (or `FSDP1`), else `DDP`."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return f"DeepSpeed ZeRO-{deepspeed_stage()}"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return f"FSDP{os.environ.get('FSDP_VERSION', '1')}"
    return "DDP"


def deepspeed_stage() -> str:
    """The ZeRO stage of an accelerate DeepSpeed launch: its config file's, else the accelerate config's."""
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if config_file != "none" and Path(config_file).is_file():
        return str(json.loads(Path(config_file).read_text())["zero_optimization"]["stage"])
    return os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "?")


def check_launch() -> None:
    """
    Refuse a launch that trains on fewer processes than were asked for.

    `accelerate launch --num_processes N` with N > 1 and neither a GPU, `--multi_gpu` nor a multi-process config
    file (DeepSpeed, FSDP, MULTI_GPU) runs its simple launcher: one process, with only `MASTER_ADDR` telling that more
    were meant (accelerate sets it for N > 1 and nothing else).

    Raises:
        UsageError: naming the launch line that starts them all.
    """
    by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ
    if by_accelerate and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        raise UsageError(
            "accelerate launch asked for several processes but started one (without a GPU, only --multi_gpu or a "
            "config file with an engine starts them all): add --multi_gpu (DDP) or --config_file, e.g. "
            "accelerate launch --multi_gpu --num_processes 2 -m fipo_trl train RECIPE"
        )


def launch_fields() -> dict:
    """
    The training-argument fields that make accelerate's state count every launched process on a machine without a
    GPU, for the config to be built with them ([`check_launch`] first): `TrainingArguments` sets the state up when
    built, and TRL's `GRPOConfig` sizes its generation batch by the world size it then sees.

    DeepSpeed: `ddp_backend="gloo"` (accelerate hands the group to DeepSpeed only when not told `cpu`; without a
    backend it counts 1 process). DDP and FSDP: `use_cpu=True` (accelerate's multi-CPU state, over gloo).

    Returns:
        `dict`: empty with a GPU and for one plain process.
    """
    import torch

    check_launch()
    engine = requested_engine()
    if torch.cuda.is_available() or (launched_processes() == 1 and engine == "DDP"):
        return {}
    return {"ddp_backend": "gloo"} if engine.startswith("DeepSpeed") else {"use_cpu": True}


def launch_flags(argv) -> list[str]:
    """[`launch_fields`] as `--field value` flags, those that `argv` does not set itself."""
    fields = {name: value for name, value in launch_fields().items() if f"--{name}" not in argv}
    return [item for name, value in fields.items() for item in (f"--{name}", str(value).lower())]


def configure_processes(training_args) -> str:
    """
    Finish accelerate's state for the launch and say what the run trains on: FSDP on a machine without a GPU
    ([`enable_fsdp`]), then the check that this process counts every launched one, then one line (main process).

    Called once by `fipo-trl train` before the model loads, on `training_args` built with [`launch_fields`].

    Returns:
        `str`: e.g. `2 processes (DeepSpeed ZeRO-3)`, as [`describe`] says it of the trainer's accelerator.

    Raises:
        UsageError: when this process trains as fewer processes than were launched, or without the DeepSpeed asked
            for.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    processes, engine = launched_processes(), requested_engine()
    if engine.startswith("FSDP") and not torch.cuda.is_available():
        enable_fsdp(training_args)
    state = PartialState()
    if engine.startswith("DeepSpeed") and state.distributed_type != DistributedType.DEEPSPEED:
        raise UsageError(
            f"the launch asks for {engine} but accelerate set up without DeepSpeed: use_cpu turns it off; drop "
            "--use_cpu (without a GPU, bf16 under DeepSpeed is refused by transformers: train with --bf16 false)"
        )
    if state.num_processes != processes:  # never a process training alone while the launcher counts more
        raise UsageError(
            f"the launcher started {processes} processes but accelerate counts {state.num_processes}: launch with "
            f"{LAUNCH_LINE}"
        )
    announced = phrase(processes, engine)
    if state.is_main_process:
        print(f"fipo-trl train: training on {announced}", flush=True)
    return announced


def enable_fsdp(training_args) -> None:
    """
    Accelerate's FSDP state over gloo: `AcceleratorState` enables FSDP only for GPU-type backends, so the plugin of
    the launch (read from its environment, as `Accelerator` does) is set on the state the trainer's accelerator
    takes over.
    """
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    plugin = FullyShardedDataParallelPlugin()
    state = AcceleratorState(
        mixed_precision=training_args.mixed_precision, dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True
    )
    # both views: each later AcceleratorState() (the trainer's Accelerator makes one) copies PartialState's over it
    state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)


def phrase(processes, engine) -> str:
    """`2 processes (DeepSpeed ZeRO-3)`, `2 processes (DDP)`, `1 process (single process)`."""
    if processes == 1 and engine == "DDP":
        return "1 process (single process)"
    return f"{processes} process{'es' if processes > 1 else ''} ({engine})"


def describe(accelerator) -> str:
    """What `accelerator` trains on, as [`configure_processes`] announced it: the final screen repeats it."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        engine = f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    elif accelerator.distributed_type == DistributedType.FSDP:
        engine = f"FSDP{state.fsdp_plugin.fsdp_version}"
    else:
        engine = "DDP"
    return phrase(accelerator.num_processes, engine)
