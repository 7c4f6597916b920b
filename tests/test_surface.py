"""The trainer's surface: a default FIPOTrainer runs in no TRL hook but the loss's two; each extra composes."""

import dataclasses
import inspect
import warnings

import pytest
from conftest import PROMPTS, TINY_TRAINING, reward_length
from datasets import Dataset
from transformers import Trainer
from trl import GRPOConfig, GRPOTrainer

import fipo_trl.dynamic_sampling.config as dynamic_sampling_config
from fipo_trl import (
    DAPOConfig,
    DynamicSamplingConfig,
    DynamicSamplingMixin,
    ExactResumeMixin,
    FIPOConfig,
    FIPOTrainer,
    RewardSpreadCallback,
)
from fipo_trl.cli.recipe_classes import RecipeConfig, RecipeTrainer


LOSS_HOOKS = {"_compute_loss", "_get_per_token_logps_and_entropies"}
# `__init__` refuses a config that is not a FIPOConfig and sets two attributes; it wraps TRL's, it is no hook
CONSTRUCTOR = {"__init__"}


def methods_of_grpo_trainer():
    """Every method name defined in GRPOTrainer's MRO (GRPOTrainer, trl's _BaseTrainer, transformers' Trainer)."""
    names = set()
    for cls in GRPOTrainer.__mro__[: GRPOTrainer.__mro__.index(Trainer) + 1]:
        for name, value in vars(cls).items():
            if inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod, property)):
                names.add(name)
    return names


def static(cls, name):
    """`getattr(cls, name)` without binding, so that a classmethod or property compares by identity too."""
    return inspect.getattr_static(cls, name)


def test_fipo_trainer_overrides_only_the_loss_hooks():
    names = methods_of_grpo_trainer()
    assert LOSS_HOOKS <= names and len(names) > 100  # the walk found TRL's and transformers' methods
    overridden = {name for name in names if static(FIPOTrainer, name) is not static(GRPOTrainer, name)}
    assert overridden == LOSS_HOOKS | CONSTRUCTOR
    assert FIPOTrainer.__mro__[1] is GRPOTrainer


def test_fipo_config_holds_no_dynamic_sampling_field():
    fields = {f.name for f in dataclasses.fields(FIPOConfig)}
    assert not fields & {f.name for f in dataclasses.fields(DynamicSamplingConfig)}
    assert not issubclass(FIPOConfig, DynamicSamplingConfig)


def test_default_fipo_trainer_writes_no_generation_state_and_the_cli_trainer_does(tiny_model_dir, tmp_path):
    # exact resume is opt-in: a library FIPOTrainer's checkpoint is a plain TRL checkpoint; the CLI's keeps the state
    saved = {}
    for trainer_cls, config_cls in [(FIPOTrainer, FIPOConfig), (RecipeTrainer, RecipeConfig)]:
        output_dir = tmp_path / trainer_cls.__name__
        fields = {**TINY_TRAINING, "max_steps": 2, "save_strategy": "steps", "save_steps": 2}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            args = config_cls(output_dir=str(output_dir), **fields)
        dataset = Dataset.from_dict({"prompt": PROMPTS * 4})
        trainer_cls(model=tiny_model_dir, reward_funcs=reward_length, args=args, train_dataset=dataset).train()
        saved[trainer_cls] = sorted(p.name for p in (output_dir / "checkpoint-2").glob("fipo_generation_state_*"))
    assert saved == {FIPOTrainer: [], RecipeTrainer: ["fipo_generation_state_0.pt"]}


def test_the_cli_trainer_composes_every_extra_and_a_library_trainer_has_no_spread_stop(tiny_model_dir, tmp_path):
    # the CLI adds the stop (its fault row in tests/test_faults.py); a library FIPOTrainer carries none unless asked
    assert RecipeTrainer.__mro__[1:4] == (DynamicSamplingMixin, ExactResumeMixin, FIPOTrainer)
    assert issubclass(RecipeConfig, DynamicSamplingConfig) and issubclass(RecipeConfig, FIPOConfig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = FIPOConfig(output_dir=str(tmp_path), **{**TINY_TRAINING, "max_steps": 1})
    dataset = Dataset.from_dict({"prompt": PROMPTS * 4})
    trainer = FIPOTrainer(model=tiny_model_dir, reward_funcs=reward_length, args=args, train_dataset=dataset)
    assert not any(isinstance(callback, RewardSpreadCallback) for callback in trainer.callback_handler.callbacks)


@pytest.mark.parametrize("config_cls", [DAPOConfig, RecipeConfig], ids=["DAPOConfig", "RecipeConfig"])
def test_composed_config_runs_each_validation_once_parent_first(config_cls, monkeypatch):
    calls = []
    parent, check = GRPOConfig.__post_init__, dynamic_sampling_config.check_dynamic_sampling_fields

    def counted_parent(self):
        calls.append("GRPOConfig")
        parent(self)

    def counted_check(args):
        calls.append(("DynamicSamplingConfig", args.generation_batch_size))  # the geometry GRPOConfig resolved
        check(args)

    monkeypatch.setattr(GRPOConfig, "__post_init__", counted_parent)
    monkeypatch.setattr(dynamic_sampling_config, "check_dynamic_sampling_fields", counted_check)
    fields = {"output_dir": "unused", "use_cpu": True, "per_device_train_batch_size": 4, "num_generations": 4}
    config_cls(**fields, steps_per_generation=2, dynamic_sampling=True)
    assert calls == ["GRPOConfig", ("DynamicSamplingConfig", 8)]


@pytest.mark.parametrize("config_cls", [DAPOConfig, RecipeConfig], ids=["DAPOConfig", "RecipeConfig"])
def test_composed_config_refuses_what_either_part_refuses(config_cls):
    fields = {"output_dir": "unused", "use_cpu": True, "per_device_train_batch_size": 4, "steps_per_generation": 2}
    with pytest.raises(ValueError, match="dynamic_sampling_on_limit='skip'"):
        config_cls(**fields, num_generations=4, dynamic_sampling_on_limit="skip")
    with pytest.raises(ValueError, match="num_generations"):  # GRPOConfig's own check still runs
        config_cls(**fields, num_generations=3)
