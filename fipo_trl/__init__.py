"""FIPO (Future-KL Influenced Policy Optimization) for Hugging Face TRL."""

from .config import FIPOConfig
from .core import FIPOWeights, discounted_future_sum, fipo_advantages, fipo_weights
from .trainer import FIPOTrainer


__version__ = "0.1.0"
__all__ = ["FIPOConfig", "FIPOTrainer", "FIPOWeights", "discounted_future_sum", "fipo_advantages", "fipo_weights"]
