"""
[`DynamicSamplingConfig`]: the fields of DAPO's dynamic sampling, a dataclass mixin for `GRPOConfig` and subclasses.

Compose it in front of the trainer's config, `@dataclass class MyConfig(DynamicSamplingConfig, GRPOConfig)`, and give
that config to a trainer with [`~fipo_trl.DynamicSamplingMixin`] (`fipo_trl.DAPOConfig` / `fipo_trl.DAPOTrainer` are
that composition with DAPO's defaults). Its `__post_init__` runs the parent config's validation first, then its own.
"""

from dataclasses import dataclass, field

from .. import official
from .group_filter import METRICS, ON_LIMIT, round_sizes


@dataclass
class DynamicSamplingConfig:
    r"""
    The fields of DAPO's dynamic sampling (the group filter, docs/dynamic-sampling.md), to be composed in front of a
    `GRPOConfig` (sub)class. The defaults name the official 32B FIPO run (`recipe/fipo/run_fipo_qwen2.5_32b.sh`,
    `algorithm.filter_groups`; `fipo_trl/official.py`).

    Parameters:
        dynamic_sampling (`bool`, *optional*, defaults to `False`):
            Train only on groups whose filter metric is not the same for all `num_generations` completions, generating
            further rounds until a generation batch holds `generation_batch_size / num_generations` such groups (32B
            script `algorithm.filter_groups.enable=True`). Off by default, as in TRL: every group is trained on.
        dynamic_sampling_metric (`str`, *optional*, defaults to `"accuracy"`):
            What must vary within a group: `"accuracy"` (first reward function > 0, the official `acc` of the ±1 DAPO
            scorer; 32B script `filter_groups.metric=acc`), `"reward"` (the weighted sum of all rewards) or the name
            of one reward function.
        dynamic_sampling_prompts_per_round (`int` or `None`, *optional*, defaults to `None`):
            Prompts generated per round (32B script `gen_batch_size=2048`, for 512 kept). The first round is the
            dataloader's generation batch topped up from a seeded stream over the training set; later rounds come
            from the stream alone. `None` draws one generation batch (`generation_batch_size / num_generations`
            prompts) per round. `× num_generations` must split evenly over the processes.
        max_num_gen_batches (`int`, *optional*, defaults to `10`):
            Rounds allowed per generation batch (32B script `filter_groups.max_num_gen_batches=10`); `0` or less
            means no limit, as in verl.
        dynamic_sampling_on_limit (`str`, *optional*, defaults to `"raise"`):
            When `max_num_gen_batches` rounds still kept too few groups: `"raise"` stops training with an error (the
            official behaviour); `"fill"` completes the batch with dropped groups (advantage 0, as without the
            filter), warns, and logs their number as `dynamic_sampling/filled_groups`.
    """

    dynamic_sampling: bool = field(
        default=False,
        metadata={"help": "Train only on groups whose metric varies, generating more rounds (32B: filter_groups on)."},
    )
    dynamic_sampling_metric: str = field(
        default="accuracy",
        metadata={"help": "Filter metric: 'accuracy' (first reward > 0, official acc), 'reward', or a reward name."},
    )
    dynamic_sampling_prompts_per_round: int | None = field(
        default=None,
        metadata={"help": "Prompts generated per round (32B: gen_batch_size 2048); None = one generation batch."},
    )
    max_num_gen_batches: int = field(
        default=official.MAX_NUM_GEN_BATCHES,
        metadata={"help": "Rounds allowed per generation batch; <= 0 = no limit (32B: 10)."},
    )
    dynamic_sampling_on_limit: str = field(
        default="raise",
        metadata={"help": "At the round limit: 'raise' (official) or 'fill' with dropped groups and warn."},
    )

    def __post_init__(self):
        super().__post_init__()  # the parent config first: the geometry checked below is the one it resolved
        check_dynamic_sampling_fields(self)


def check_dynamic_sampling_fields(args) -> None:
    """
    Refuse dynamic-sampling fields that cannot work, naming the field and the fix.

    Args:
        args: a config with [`DynamicSamplingConfig`]'s fields and `GRPOConfig`'s resolved `generation_batch_size`,
            `num_generations` and `world_size`.

    Raises:
        ValueError: for an unknown limit policy or metric, a round size below 1, or a round geometry that
            [`~fipo_trl.dynamic_sampling.group_filter.round_sizes`] refuses (checked only with the filter on).
    """
    if args.dynamic_sampling_on_limit not in ON_LIMIT:
        raise ValueError(
            f"dynamic_sampling_on_limit={args.dynamic_sampling_on_limit!r} must be one of {ON_LIMIT}: 'raise' "
            "stops at the round limit (official), 'fill' trains on a batch completed with dropped groups."
        )
    if not isinstance(args.dynamic_sampling_metric, str) or not args.dynamic_sampling_metric:
        raise ValueError(
            f"dynamic_sampling_metric={args.dynamic_sampling_metric!r} must be {METRICS[0]!r} (official acc), "
            f"{METRICS[1]!r} or the name of a reward function."
        )
    if args.dynamic_sampling_prompts_per_round is not None and args.dynamic_sampling_prompts_per_round < 1:
        raise ValueError(
            f"dynamic_sampling_prompts_per_round={args.dynamic_sampling_prompts_per_round} must be >= 1, or None "
            f"for one generation batch per round (official: {official.PROMPTS_PER_ROUND})."
        )
    if args.dynamic_sampling:
        round_sizes(
            args.generation_batch_size, args.num_generations, args.dynamic_sampling_prompts_per_round, args.world_size
        )
