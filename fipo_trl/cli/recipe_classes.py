"""
The config class a `fipo-trl train` recipe fills and the trainer class it builds: FIPO with every extra of the CLI.

The library's [`~fipo_trl.FIPOTrainer`] is `GRPOTrainer` plus FIPO's loss, and each extra is opt-in; the command line
keeps its behaviour by composing them here, once:

1. [`RecipeConfig`] = [`~fipo_trl.FIPOConfig`] + [`~fipo_trl.DynamicSamplingConfig`]: a recipe may set
   `dynamic_sampling: true` and its fields;
2. [`RecipeTrainer`] = [`~fipo_trl.FIPOTrainer`] + [`~fipo_trl.DynamicSamplingMixin`] +
   [`~fipo_trl.ExactResumeMixin`]: the filter when the recipe asks for it, and exact resume always (what it costs a
   checkpoint, measured and estimated for the 32B recipe: docs/fipo_trainer.md, "Exact resume");
3. the reward-spread stop is a callback, [`~fipo_trl.RewardSpreadCallback`], that `fipo-trl train` adds.

This module imports TRL: `fipo-trl train --help` does not import it.
"""

from dataclasses import dataclass

from ..config import FIPOConfig
from ..dynamic_sampling.config import DynamicSamplingConfig
from ..dynamic_sampling.trainer import DynamicSamplingMixin
from ..exact_resume import ExactResumeMixin
from ..trainer import FIPOTrainer


@dataclass
class RecipeConfig(DynamicSamplingConfig, FIPOConfig):
    """
    [`~fipo_trl.FIPOConfig`] with the dynamic-sampling fields of [`~fipo_trl.DynamicSamplingConfig`]. Its
    `__post_init__` is the mixin's, which runs FIPOConfig's (and so GRPOConfig's) first, then checks its own fields.
    """


class RecipeTrainer(DynamicSamplingMixin, ExactResumeMixin, FIPOTrainer):
    """
    [`~fipo_trl.FIPOTrainer`] with dynamic sampling and exact resume, the trainer of `fipo-trl train`.

    The mixins come before `FIPOTrainer` so that their hooks run first and hand on to FIPOTrainer's (the loss) and
    GRPOTrainer's with `super()`. They override disjoint hooks (generation and rewards; sampler and checkpoint
    state), so their order between themselves changes nothing; `DynamicSamplingMixin` is first because its
    `__init__` refuses a config without its fields before the model loads, and it sets the `prompt_stream` that
    `ExactResumeMixin` saves with each checkpoint.
    """
