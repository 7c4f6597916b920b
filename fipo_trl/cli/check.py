"""
`fipo-trl check RECIPE [--num_processes N] [--num_machines M] [--config_file FILE] [--field value ...]`: what a recipe
really does, with accelerate's flag names (`--config_file` is the accelerate config of the launch).

Reads the recipe the way `fipo-trl train` does, loads no model and prints:

1. the batch geometry for N training processes: prompts and completions per generation batch, completions per
   optimizer step, optimizer steps per generation batch, and whether FIPO is active (some updates off-policy) or
   numerically identical to DAPO (docs/fipo.md §1);
2. tokens per optimizer step (upper bound) and the peak memory per GPU of one training micro-step, term by term,
   under the ZeRO/FSDP stage of the accelerate config, with what fits 80 and 141 GB (`memory_estimate.memory_rows`);
3. warnings for known mistakes. An impossible configuration exits with status 2 and a one-line message.

`FIPOConfig.__post_init__` resolves the geometry for the current world size (1 on a laptop), so the geometry here is
computed from the recipe's raw fields for N processes, with TRL 1.16's rules (`GRPOConfig.__post_init__`).
"""

import dataclasses
import io
import json
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import yaml

from ..batch_geometry import GEOMETRY_FIELDS, resolve_geometry
from ..dynamic_sampling.group_filter import round_sizes
from ..errors import UsageError
from ..memory_estimate import Sharding, memory_rows, model_shape
from ..official import (
    MAX_COMPLETION_LENGTH,
    MAX_NUM_GEN_BATCHES,
    MAX_PROMPT_LENGTH,
    NUM_GENERATIONS,
    PROMPTS_PER_MINI_BATCH,
    PROMPTS_PER_ROUND,
    PROMPTS_PER_STEP,
    STEPS_PER_ROLLOUT,
)
from . import RaisingArgumentParser
from .recipe import read_yaml_file


# Official 32B run (docs/fipo.md §3.1), from `fipo_trl.official`
OFFICIAL = {
    "prompts_per_generation": PROMPTS_PER_STEP,
    "completions_per_generation": PROMPTS_PER_STEP * NUM_GENERATIONS,
    "completions_per_step": PROMPTS_PER_MINI_BATCH * NUM_GENERATIONS,
    "steps_per_generation": STEPS_PER_ROLLOUT,
    "num_generations": NUM_GENERATIONS,
    "max_completion_length": MAX_COMPLETION_LENGTH,
    "max_prompt_length": MAX_PROMPT_LENGTH,
}
# 32B script: algorithm.filter_groups (metric acc), gen_batch_size, train_batch_size, max_num_gen_batches
OFFICIAL_DYNAMIC_SAMPLING = (
    f"on, {PROMPTS_PER_ROUND} prompts per round, {PROMPTS_PER_STEP} kept, at most "
    f"{MAX_NUM_GEN_BATCHES} rounds, metric acc"
)
# 32B mini-batch, training batch and generation batch, all in prompts
OFFICIAL_PROMPT_COUNTS = (PROMPTS_PER_MINI_BATCH, PROMPTS_PER_STEP, PROMPTS_PER_ROUND)


def cli_overrides(extra_args):
    """`--field value` pairs given after the recipe, as `fipo-trl train` takes them, typed as YAML would type them."""
    if len(extra_args) % 2 or any(not flag.startswith("--") for flag in extra_args[::2]):
        raise UsageError(f"field overrides must be --field value pairs, got: {' '.join(extra_args)}")
    return {flag[2:]: yaml.safe_load(value) for flag, value in zip(extra_args[::2], extra_args[1::2], strict=True)}


def raw_geometry(recipe, defaults):
    """The geometry fields as written in the recipe, FIPOConfig's defaults for the missing ones."""
    raw = {}
    for name in GEOMETRY_FIELDS:
        value = recipe.get(name, defaults[name])
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageError(f"{name}={value!r} must be an integer")
        raw[name] = value
    return raw


def parse_typed(recipe_path, raw, extra_args):
    """
    Parse the recipe with `fipo-trl train`'s own parser, so unknown fields and bad values fail as they would there.

    The geometry fields are replaced by values valid at world size 1 (they were checked for N processes already)
    and `use_cpu` is set, because TrainingArguments refuses bf16 on a machine without a GPU.
    """
    from .recipe import parse_recipe

    group = raw["num_generations"]
    neutral = ["--per_device_train_batch_size", str(group), "--per_device_eval_batch_size", str(group)]
    neutral += ["--gradient_accumulation_steps", "1", "--use_cpu", "true"]
    if raw["generation_batch_size"] is None:
        neutral += ["--steps_per_generation", "2"]
    else:
        neutral += ["--generation_batch_size", str(2 * group)]
    # FIPOConfig warns about on-policy geometry for world size 1; the N-process verdict comes from here instead
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return parse_recipe([recipe_path, *extra_args, *neutral])


def find_warnings(recipe, geometry, args, script_args, model_args, sharding):
    """Known mistakes and deviations from the official run, one sentence each: geometry first, then settings."""
    return geometry_warnings(recipe, geometry) + settings_warnings(geometry, args, script_args, model_args, sharding)


def geometry_warnings(recipe, geometry):
    """Batch sizes given in prompts, on-policy or straddling optimizer steps, revisited completions."""
    found = []
    for name in ("per_device_train_batch_size", "generation_batch_size"):
        if recipe.get(name) in OFFICIAL_PROMPT_COUNTS:
            found.append(
                f"{name}={recipe[name]} looks like a count of prompts (official: {PROMPTS_PER_STEP} prompts per "
                f"batch, mini-batches of {PROMPTS_PER_MINI_BATCH}); TRL counts completions, so this is "
                f"{recipe[name] / geometry.num_generations:g} prompts × {geometry.num_generations}."
            )
    if not geometry.off_policy:
        found.append(
            "every optimizer step is on-policy: log π_θ = log π_old, all FIPO weights are 1 and FIPO is exactly DAPO. "
            f"Set steps_per_generation to a multiple of gradient_accumulation_steps (official: {STEPS_PER_ROLLOUT} ×)."
        )
    elif geometry.steps_per_generation % geometry.gradient_accumulation_steps:
        found.append(
            f"steps_per_generation={geometry.steps_per_generation} is not a multiple of gradient_accumulation_steps="
            f"{geometry.gradient_accumulation_steps}: optimizer steps straddle two generation batches."
        )
    if geometry.num_iterations > 1:
        found.append(
            f"num_iterations={geometry.num_iterations} revisits the same completions (FIPO then also sees the effect "
            f"of training on that very completion); the official run uses num_iterations=1 and {STEPS_PER_ROLLOUT} "
            "disjoint mini-batches: raise steps_per_generation instead."
        )
    return found


def settings_warnings(geometry, args, script_args, model_args, sharding):
    """bf16 weights without a master copy, vLLM settings, and settings the official recipe does not use."""
    found = []
    shape, _ = model_shape(model_args.model_name_or_path)
    checkpoint_dtype = (shape or {}).get("dtype") or (shape or {}).get("torch_dtype") or "bfloat16"
    weight_dtype = checkpoint_dtype if model_args.dtype in ("auto", None) else model_args.dtype
    if sharding.zero_stage == 0 and weight_dtype == "bfloat16" and args.learning_rate < 1e-4:
        # DeepSpeed keeps fp32 master weights and FSDP upcasts them; a plain (DDP) run trains the bf16 tensors
        found.append(
            f"the weights stay bfloat16 under {sharding.label} (no fp32 master copy): AdamW updates at "
            f"learning_rate={args.learning_rate:g} mostly round away. Pass --dtype float32 (bf16=True still "
            "autocasts the compute) or use a DeepSpeed/FSDP config."
        )
    if args.use_vllm and args.vllm_importance_sampling_correction:
        found.append(
            f"vllm_importance_sampling_correction=True multiplies the loss by a truncated vLLM/trainer IS ratio "
            f"({args.vllm_importance_sampling_mode}); the official recipe has no such correction (set it false)."
        )
    if args.use_vllm and args.vllm_mode == "colocate" and geometry.num_processes % args.vllm_tensor_parallel_size:
        raise UsageError(
            f"vllm_tensor_parallel_size={args.vllm_tensor_parallel_size} does not divide the {geometry.num_processes} "
            "processes (colocate mode shards vLLM over groups of training processes)"
        )
    if args.mask_truncated_completions:
        found.append("mask_truncated_completions=True drops truncated completions; the official recipe keeps them.")
    if args.beta != 0:
        found.append(f"beta={args.beta} adds a KL term and a reference model; the official recipe has none.")
    if args.warmup_steps and args.warmup_steps * geometry.steps_per_generation_batch == 80 and args.warmup_steps < 80:
        found.append(
            f"warmup_steps={args.warmup_steps} counts optimizer steps in TRL; the official 10 warm-up *training* "
            "steps are 80 optimizer steps (warmup_steps: 80)."
        )
    if args.max_completion_length >= 8192 and not args.gradient_checkpointing:
        found.append(f"gradient_checkpointing is off with {args.max_completion_length}-token completions.")
    if script_args.max_prompt_length is None:
        found.append(
            "max_prompt_length is not set: prompts are never truncated "
            f"(official: {MAX_PROMPT_LENGTH}, left-truncated)."
        )
    return found


def describe(recipe_path, recipe, geometry, args, script_args, model_args, sharding, found):
    """The report, as lines of text: the launch, the geometry table, dynamic sampling, memory, the warnings."""
    lines = [f"fipo-trl check {recipe_path}", "", *launch_lines(geometry, args, sharding), ""]
    lines += geometry_table(geometry, args, script_args)
    lines += ["", *dynamic_sampling_lines(geometry, args), ""]
    lines += memory_lines(geometry, args, script_args, model_args, sharding)
    lines.append("")
    lines += [f"  warning: {text}" for text in found] or ["  no warnings"]
    return lines


def launch_lines(geometry, args, sharding):
    """The processes, nodes and sharding of the launch, and where generation runs (vLLM or transformers)."""
    lines = [
        f"  {geometry.num_processes} training process(es) on {geometry.num_nodes} node(s) "
        f"({geometry.num_processes // geometry.num_nodes} per node), {sharding.label}"
    ]
    if not args.use_vllm:
        return [*lines, "  generation: transformers generate() inside each training process (no vLLM)"]
    server = args.vllm_server_base_url or f"{args.vllm_server_host}:{args.vllm_server_port}"
    if server.startswith("0.0.0.0"):
        server = f"--vllm_server_host given at launch, port {args.vllm_server_port}"
    where = (
        f"server mode ({server}); its GPUs come on top of these processes"
        if args.vllm_mode == "server"
        else f"colocate mode, tensor parallel {args.vllm_tensor_parallel_size}, "
        f"{args.vllm_gpu_memory_utilization:.0%} of each GPU reserved"
    )
    return [*lines, f"  vLLM: {where}"]


def tokens_per_sequence(args, script_args):
    """Prompt budget (0 when prompts are not truncated) plus `max_completion_length`."""
    return args.max_completion_length + (script_args.max_prompt_length or 0)


def geometry_table(geometry, args, script_args):
    """This recipe's batch geometry and token budget beside the official 32B run's, as aligned rows."""
    sequence = tokens_per_sequence(args, script_args)
    prompt_note = "" if script_args.max_prompt_length else " + prompts (no max_prompt_length)"
    stale, total = geometry.off_policy_steps
    verdict = f"active: {stale} of {total} steps off-policy" if stale else "identical to DAPO (all on-policy)"
    official_tokens = OFFICIAL["max_completion_length"] + OFFICIAL["max_prompt_length"]
    official_steps = OFFICIAL["steps_per_generation"]  # the first step of each batch is on-policy
    table = [
        ("", "this recipe", "official 32B (docs/fipo.md §3.1)"),
        ("prompts per generation batch", geometry.prompts_per_generation, OFFICIAL["prompts_per_generation"]),
        (
            "completions per generation batch",
            f"{geometry.completions_per_generation} (×{geometry.num_generations})",
            f"{OFFICIAL['completions_per_generation']} (×{OFFICIAL['num_generations']})",
        ),
        ("completions per optimizer step", geometry.completions_per_step, OFFICIAL["completions_per_step"]),
        ("optimizer steps per generation batch", f"{geometry.steps_per_generation_batch:g}", official_steps),
        ("FIPO", verdict, f"active: {official_steps - 1} of {official_steps} steps off-policy"),
        ("max tokens per sequence", f"{sequence}{prompt_note}", official_tokens),
        (
            "max tokens per micro-batch (per GPU)",
            f"{sequence * geometry.per_device_train_batch_size:,}",
            f"{official_tokens:,} / 8 (Ulysses SP)",
        ),
        (
            "max tokens per optimizer step",
            f"{sequence * geometry.completions_per_step:,}",
            f"{official_tokens * OFFICIAL['completions_per_step']:,}",
        ),
    ]
    width = max(32, *(len(str(value)) for _, value, _ in table))  # the widest value sets the column
    return [f"  {name:<38} {value!s:<{width}}   {official}".rstrip() for name, value, official in table]


def dynamic_sampling_lines(geometry, args):
    """Dynamic sampling's settings for this geometry, and the official run's."""
    try:
        sampling = dynamic_sampling_summary(
            args, geometry.completions_per_generation, geometry.num_processes, geometry.steps_per_generation_batch
        )
    except ValueError as error:
        raise UsageError(str(error)) from error
    names = max(len(name) for name, _ in sampling)
    official = f"official 32B: {OFFICIAL_DYNAMIC_SAMPLING}"
    return [*(f"  {name:<{names}}   {value}" for name, value in sampling), f"  {'':<{names}}   ({official})"]


def memory_lines(geometry, args, script_args, model_args, sharding):
    """The model's parameter count and the per-GPU peak of a micro-step by term, with what fits 80 and 141 GB."""
    return memory_rows(model_args.model_name_or_path, args, script_args.max_prompt_length, geometry, sharding)


def make_parser():
    parser = RaisingArgumentParser(
        prog="fipo-trl check",
        description="Print the batch geometry, FIPO on/off verdict, token and memory budget of a recipe at scale.",
    )
    parser.add_argument("recipe", help="recipe YAML, as given to `fipo-trl train`, then any --field value overrides")
    # accelerate launch's names
    parser.add_argument(
        "--num_processes", type=int, help="training processes over all nodes (default: the accelerate config's, or 1)"
    )
    parser.add_argument("--num_machines", type=int, help="machines (default: the accelerate config's, or 1)")
    parser.add_argument(
        "--config_file", help="accelerate config YAML of the launch, for the ZeRO/FSDP stage and process counts"
    )
    return parser


def first_given(*values):
    """The first value that is not `None`."""
    return next(value for value in values if value is not None)


def cli(argv=None):
    """`fipo-trl check RECIPE [flags] [--field value ...]`; an impossible configuration raises [`UsageError`]."""
    options, extra_args = make_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    recipe = read_yaml_file(options.recipe)
    launch = recipe_launch(options.recipe, recipe)
    config_file = first_given(options.config_file, launch.get("config_file"), "")
    sharding = Sharding("single process", 0)
    if config_file:
        sharding = read_accelerate_config(config_file)
    for flag, value in (("--num_processes", options.num_processes), ("--num_machines", options.num_machines)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: a run needs at least 1")
    # `0` is a value given, not "unset": missing flags fall back to the recipe's launch (its two counts go together,
    # so either flag replaces both), then the accelerate config, then 1
    counts = {} if options.num_processes is not None or options.num_machines is not None else launch
    num_processes = first_given(options.num_processes, counts.get("num_processes"), sharding.num_processes, 1)
    num_nodes = first_given(options.num_machines, counts.get("num_machines"), sharding.num_machines, 1)
    used = {
        key: value
        for key, value in launch.items()
        if (options.config_file is None if key == "config_file" else counts is launch)
    }
    given = " ".join(f"--{key} {value}" for key, value in used.items())
    note = [f"  from the recipe's launch field: {given} (flags override it)"] if used else []

    from ..config import FIPOConfig

    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(FIPOConfig)
        if f.name in GEOMETRY_FIELDS
    }
    recipe = {**recipe, **cli_overrides(extra_args)}  # CLI flags win over the YAML, as in `fipo-trl train`
    raw = raw_geometry(recipe, defaults)
    geometry = resolve_geometry(raw, num_processes, num_nodes)
    script_args, args, model_args = parse_typed(options.recipe, raw, extra_args)
    found = find_warnings(recipe, geometry, args, script_args, model_args, sharding)
    lines = describe(options.recipe, recipe, geometry, args, script_args, model_args, sharding, found)
    print("\n".join([*lines[:2], *note, *lines[2:]]))
    return 0


if __name__ == "__main__":
    from ..cli import main

    sys.exit(main(["check", *sys.argv[1:]]))


def recipe_launch(recipe_path, recipe) -> dict:
    """The recipe's `launch` field (the launch it is written for), checked; `{}` when it has none."""
    launch = recipe.get("launch") or {}
    if not isinstance(launch, dict):
        raise UsageError(f"{recipe_path}: launch must be a mapping of config_file, num_processes, num_machines")
    for key in ("num_processes", "num_machines"):
        value = launch.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{recipe_path}: launch: {key} {value!r} must be an integer >= 1")
    return launch


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


def dynamic_sampling_summary(
    args, generation_batch_size: int, num_processes: int, optimizer_steps_per_generation: float
) -> list[tuple[str, str]]:
    """
    What the dynamic-sampling fields of a recipe imply, as `(name, value)` rows for `fipo-trl check`.

    Args:
        args: anything with [`~fipo_trl.DynamicSamplingConfig`]'s fields and `num_generations` (a parsed recipe
            config; its batch geometry is not read).
        generation_batch_size (`int`): completions per generation batch at the real world size.
        num_processes (`int`): training processes.
        optimizer_steps_per_generation (`float`): optimizer steps fed by one generation batch.

    Raises:
        ValueError: when the fields are impossible at this geometry (the message names the field and the fix).
    """
    if not args.dynamic_sampling:
        return [("dynamic sampling", "off: every generated group is trained on")]
    group = args.num_generations
    kept_groups, per_round = round_sizes(
        generation_batch_size, group, args.dynamic_sampling_prompts_per_round, num_processes
    )
    rounds = args.max_num_gen_batches
    metric = {
        "accuracy": "accuracy (first reward > 0, official `acc`)",
        "reward": "summed weighted reward",
    }.get(args.dynamic_sampling_metric, f"reward function {args.dynamic_sampling_metric!r}")
    rows = [
        ("dynamic sampling", f"on: drop groups whose {metric} is the same for all {group} completions"),
        ("prompts per round", f"{per_round} ({per_round * group} completions)"),
        ("kept groups per generation batch", f"{kept_groups} ({kept_groups * group} completions)"),
        ("max rounds per generation batch", str(rounds) if rounds > 0 else "unlimited (max_num_gen_batches <= 0)"),
    ]
    if rounds > 0:
        rows += round_limit_rows(args, kept_groups, per_round, optimizer_steps_per_generation)
    # docs/dynamic-sampling.md: the dataloader gives each prompt once per epoch, the other rounds draw from the stream
    fewest = per_round / kept_groups
    most = f"{rounds * fewest:g}×" if rounds > 0 else "unbounded"
    rows += [
        (
            "one epoch (num_train_epochs)",
            f"one pass of the dataloader: dataset prompts / {kept_groups} generation batches, as with the filter off",
        ),
        (
            "prompts generated per epoch",
            f"{fewest:g}× to {most} the dataset (extra prompts come from a separate seeded stream; official verl: "
            "every round uses up the epoch)",
        ),
    ]
    return rows


def round_limit_rows(args, kept_groups, per_round, optimizer_steps_per_generation):
    """The worst case at the round limit (`max_num_gen_batches` rounds), and what happens when it is hit."""
    group, rounds = args.num_generations, args.max_num_gen_batches
    worst = rounds * per_round * group
    return [
        ("worst-case completions per generation batch", f"{worst} ({rounds} rounds)"),
        (
            "worst-case completions per optimizer step",
            f"{worst / optimizer_steps_per_generation:g} "
            f"(filter off: {kept_groups * group / optimizer_steps_per_generation:g})",
        ),
        ("groups that must survive to stay under the limit", f"{100 * kept_groups / (rounds * per_round):.3g}%"),
        (
            "when the limit is hit",
            "error (official)"
            if args.dynamic_sampling_on_limit == "raise"
            else "fill the batch with dropped groups (A = 0), warn and log",
        ),
    ]
