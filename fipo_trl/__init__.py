"""FIPO (Future-KL Influenced Policy Optimization) for Hugging Face TRL."""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0"

# Loaded on first use, so that `import fipo_trl.rewards` (e.g. in a reward worker process) does not import TRL
_EXPORTS = {
    "DAPOConfig": "dapo",
    "DAPOTrainer": "dapo",
    "DynamicSamplingConfig": "dynamic_sampling.config",
    "DynamicSamplingMixin": "dynamic_sampling.trainer",
    "ExactResumeMixin": "exact_resume",
    "FIPOConfig": "config",
    "FIPOTrainer": "trainer",
    "FIPOWeights": "core",
    "RewardSpreadCallback": "rewards.spread",
    "discounted_future_sum": "core",
    "fipo_advantages": "core",
    "fipo_weights": "core",
}
__all__ = [
    "DAPOConfig",
    "DAPOTrainer",
    "DynamicSamplingConfig",
    "DynamicSamplingMixin",
    "ExactResumeMixin",
    "FIPOConfig",
    "FIPOTrainer",
    "FIPOWeights",
    "RewardSpreadCallback",
    "discounted_future_sum",
    "fipo_advantages",
    "fipo_weights",
]

if TYPE_CHECKING:
    from .config import FIPOConfig
    from .core import FIPOWeights, discounted_future_sum, fipo_advantages, fipo_weights
    from .dapo import DAPOConfig, DAPOTrainer
    from .dynamic_sampling.config import DynamicSamplingConfig
    from .dynamic_sampling.trainer import DynamicSamplingMixin
    from .exact_resume import ExactResumeMixin
    from .rewards.spread import RewardSpreadCallback
    from .trainer import FIPOTrainer


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fipo_trl' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
