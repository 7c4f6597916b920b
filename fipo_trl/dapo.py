"""
DAPO (https://huggingface.co/papers/2503.14476) as a TRL trainer: `GRPOTrainer` with DAPO's dynamic sampling.

TRL's `GRPOTrainer` already has DAPO's token-level loss (`loss_type="dapo"`), clip-higher (`epsilon_high`) and soft
overlong punishment (`trl.rewards.get_soft_overlong_punishment`); DAPO's dynamic sampling is
[`~fipo_trl.DynamicSamplingMixin`]. This module composes them, with DAPO's defaults, so that a DAPO baseline is a
`GRPOTrainer` plus the filter and not a FIPO run.
"""

import textwrap
from dataclasses import dataclass, field

from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import get_config_model_id

from .dynamic_sampling.config import DynamicSamplingConfig
from .dynamic_sampling.trainer import DynamicSamplingMixin


@dataclass
class DAPOConfig(DynamicSamplingConfig, GRPOConfig):
    r"""
    Configuration class for [`DAPOTrainer`].

    Inherits every parameter of [`~trl.GRPOConfig`] and of [`DynamicSamplingConfig`]; the defaults below are those
    of the DAPO paper (arXiv 2503.14476) where they differ from TRL's.

    Parameters:
        > Changed defaults

        dynamic_sampling (`bool`, *optional*, defaults to `True`):
            DAPO's dynamic sampling (paper §3.2): train only on groups whose accuracy is neither all right nor all
            wrong, generating further rounds until the batch is full.
        epsilon_high (`float`, *optional*, defaults to `0.28`):
            Upper clip ε_high, DAPO's clip-higher (paper §3.1: ε_low = 0.2, TRL's `epsilon` default, ε_high = 0.28).
        loss_type (`str`, *optional*, defaults to `"dapo"`):
            DAPO's token-level policy-gradient loss (paper §3.3), pinned here (it is also TRL 1.16's default).
    """

    dynamic_sampling: bool = field(
        default=True, metadata={"help": "DAPO's dynamic sampling (paper §3.2): train only on groups with signal."}
    )
    epsilon_high: float = field(
        default=0.28, metadata={"help": "Upper clip ε_high, DAPO clip-higher (paper §3.1: 0.28)."}
    )
    loss_type: str = field(default="dapo", metadata={"help": "DAPO's token-level policy-gradient loss (paper §3.3)."})


class DAPOTrainer(DynamicSamplingMixin, GRPOTrainer):
    """
    Trainer for DAPO (https://huggingface.co/papers/2503.14476): `GRPOTrainer` with DAPO's dynamic sampling, given a
    [`DAPOConfig`].

    It overrides only what [`DynamicSamplingMixin`] overrides (`_generate_and_score_completions`, `_generate`,
    `_calculate_rewards`); the loss is `GRPOTrainer`'s.
    """

    _tag_names = ["trl", "dapo"]
    _name = "DAPO"
    _paper = {
        "title": "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
        "id": "2503.14476",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{yu2025dapo,
                title        = {{DAPO: An Open-Source LLM Reinforcement Learning System at Scale}},
                author       = {Qiying Yu and others},
                year         = 2025,
                eprint       = {arXiv:2503.14476},
            }"""),
    }

    def __init__(self, model, reward_funcs=None, args=None, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = DAPOConfig(f"{model_name.split('/')[-1]}-DAPO")
        super().__init__(model, reward_funcs, args=args, **kwargs)
