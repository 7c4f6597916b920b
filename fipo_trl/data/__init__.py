"""Training and held-out data: the math datasets a recipe names (`math_datasets`), the synthetic tasks
(`synthetic`)."""

from .math_datasets import get_dataset


__all__ = ["get_dataset"]
