"""
Everything a training run needs before its trainer is built, checked and loaded the way `fipo-trl train` does it.

[`prepare_run`] is the one set-up of a recipe: `fipo-trl train` ([`fipo_trl.cli.train.main`]) and
`examples/compare_dapo_fipo.py` both build their trainers on what it returns, so both get the same pre-flight checks.
"""

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from ..dynamic_sampling.config import DynamicSamplingConfig
from ..dynamic_sampling.group_filter import check_dynamic_sampling_metric
from ..errors import UsageError


logger = logging.getLogger(__name__)


@dataclass
class RunSetup:
    """
    What [`prepare_run`] checked and loaded: the arguments a trainer is built from, and what the run reads after.

    Parameters:
        model_name_or_path (`str`):
            The policy's folder or Hub id, resolved from the recipe's `model_name_or_path` (a shipped asset, an
            output folder's last checkpoint, ...); `recipe_model` is the name as the recipe gives it.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The policy's tokenizer.
        train_dataset ([`~datasets.Dataset`]):
            `prompt` / `solution` rows to train on.
        heldout_dataset ([`~datasets.Dataset`] or `None`):
            The held-out check's rows; `None` when `heldout_size` is 0.
        reward_funcs (`list`):
            The recipe's reward functions, the correctness reward first.
        eval_datasets (`dict[str, Dataset]`):
            The `math_eval_datasets`, by name.
        resume_from_checkpoint (`str` or `None`):
            The checkpoint folder to resume from (`last` and `auto` resolved), or `None` for a fresh run.
    """

    model_name_or_path: str
    recipe_model: str
    tokenizer: Any
    train_dataset: Dataset
    heldout_dataset: Dataset | None
    reward_funcs: list
    eval_datasets: dict[str, Dataset]
    resume_from_checkpoint: str | None


@contextlib.contextmanager
def prepare_run(script_args, training_args, model_args) -> Iterator[RunSetup]:
    """
    Check a recipe and load what its trainer needs, refusing every mistake that can be found before the model loads;
    a context manager that holds the lock on `output_dir` ([`~fipo_trl.run.lock.OutputDirLock`]) until it exits.

    In order: the settings of `training_args` and `output_dir` ([`~fipo_trl.run.preflight.check_training_args`]), the
    lock, the model path and its weight files, the tokenizer, the datasets, the rewards, whether the model and data
    fit the settings ([`check_run_fits`]), the evaluation datasets and the resume policy
    ([`~fipo_trl.run.resume.resolve_resume`], which deletes an earlier run's checkpoints when `overwrite_output_dir`
    is set: under the lock). Then [`apply_run_settings`], the one place `training_args` is changed.

    Usage:
    ```python
    >>> with prepare_run(script_args, training_args, model_args) as run:
    ...     trainer = FIPOTrainer(model=run.model_name_or_path, reward_funcs=run.reward_funcs, args=training_args,
    ...                           train_dataset=run.train_dataset, processing_class=run.tokenizer)
    ...     trainer.train(resume_from_checkpoint=run.resume_from_checkpoint)
    ```

    Args:
        script_args ([`~fipo_trl.cli.recipe.FIPOScriptArguments`]):
            Data, rewards, the held-out check.
        training_args ([`~fipo_trl.FIPOConfig`] or `trl.GRPOConfig`):
            The trainer's config; `report_to` and `model_init_kwargs` are set here.
        model_args (`trl.ModelConfig`):
            The model's fields; left as given.

    Yields:
        [`RunSetup`]

    Raises:
        UsageError: naming the field or file and the fix.
    """
    from .lock import OutputDirLock
    from .preflight import check_training_args

    check_training_args(training_args)
    set_up_wandb(training_args)  # before anything heavy: a tracker that cannot log online says so now
    with OutputDirLock(training_args.output_dir):
        yield load_run(script_args, training_args, model_args)


def load_run(script_args, training_args, model_args) -> RunSetup:
    """The loading and checking part of [`prepare_run`], once `training_args` and the lock are in place."""
    from ..data.math_datasets import get_dataset
    from ..evaluation.datasets import load_eval_datasets
    from ..model_loading import load_tokenizer, resolve_model_path
    from ..rewards import get_reward_funcs
    from .resume import resolve_resume
    from .weight_files import check_weight_files

    model_path = resolve_model_path(model_args.model_name_or_path)
    check_weight_files(model_path)
    tokenizer = load_tokenizer(model_path, model_args.model_revision)
    train_dataset, heldout_dataset = get_dataset(script_args, tokenizer)
    reward_funcs = get_reward_funcs(script_args, training_args)
    check_run_fits(script_args, training_args, model_args, model_path, tokenizer, train_dataset, reward_funcs)
    eval_datasets = load_eval_datasets(script_args.math_eval_datasets)
    resume = resolve_resume(training_args, script_args.overwrite_output_dir, model_path)
    apply_run_settings(training_args, model_args)
    return RunSetup(
        model_name_or_path=model_path,
        recipe_model=model_args.model_name_or_path,
        tokenizer=tokenizer,
        train_dataset=train_dataset,
        heldout_dataset=heldout_dataset,
        reward_funcs=reward_funcs,
        eval_datasets=eval_datasets,
        resume_from_checkpoint=resume,
    )


def check_run_fits(script_args, training_args, model_args, model_path, tokenizer, train_dataset, reward_funcs):
    """
    The checks of `training_args` that need the loaded data: one generation batch of prompts, prompt + completion
    within the model's positions and a checkpoint within the disk, and a `dynamic_sampling_metric` that names a
    reward of the run (when the config has the dynamic-sampling fields).

    Raises:
        UsageError: naming the field to change.
    """
    from ..data.math_datasets import check_enough_prompts
    from ..model_loading import check_model_fits

    check_enough_prompts(train_dataset, training_args, script_args.dataset_name)
    check_model_fits(model_path, tokenizer, train_dataset, script_args, training_args, model_args)
    if isinstance(training_args, DynamicSamplingConfig):
        try:
            check_dynamic_sampling_metric(training_args, [func.__name__ for func in reward_funcs])  # TRL's names
        except ValueError as error:
            raise UsageError(str(error)) from error


def apply_run_settings(training_args, model_args) -> None:
    """
    The one change [`prepare_run`] makes to `training_args` after loading: `model_init_kwargs` from the model fields
    (the recipe's own `model_init_kwargs` win); [`set_up_wandb`] has set `report_to` before.
    """
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}


# The WANDB_DIR set for the previous run of this process (a script or a test session that trains several times): the
# next run replaces it with its own output_dir, where a plain `setdefault` (or wandb's own process-wide settings)
# would send its logs to the first run's
_wandb_dir_set = {"by_fipo_trl": None}


def set_up_wandb(training_args) -> None:
    """
    wandb logs next to the checkpoints; without wandb installed, `report_to` without it (console logging only).

    With `WANDB_MODE` unset, a run that cannot log online ([`wandb_offline_reason`]: no API key, or the wandb server
    unreachable) logs offline instead, saying so in one line: wandb would otherwise fail after the model loaded, or
    wait about two minutes for the network first. `WANDB_MODE=online` makes the same finding an error.
    """
    if "wandb" not in training_args.report_to:
        return
    try:
        import wandb
    except ImportError:
        logger.warning("wandb is not installed (pip install wandb): logging to the console only.")
        training_args.report_to = [r for r in training_args.report_to if r != "wandb"]
        return
    os.makedirs(training_args.output_dir, exist_ok=True)
    earlier = _wandb_dir_set["by_fipo_trl"]
    if os.environ.get("WANDB_DIR") in (None, earlier):  # a WANDB_DIR of the user's is kept
        os.environ["WANDB_DIR"] = _wandb_dir_set["by_fipo_trl"] = training_args.output_dir  # logs by the checkpoints
        if earlier not in (None, training_args.output_dir):
            wandb.teardown()  # wandb reads WANDB_DIR once per process setup: a new setup reads this run's
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode not in ("", "online"):  # offline, disabled, dryrun: nothing to reach
        return
    reason = wandb_offline_reason()
    if reason is None:
        return
    if mode == "online":
        raise UsageError(f"WANDB_MODE=online but {reason}: fix it, or set WANDB_MODE=offline and `wandb sync` later")
    os.environ["WANDB_MODE"] = "offline"
    if training_args.process_index == 0:
        logger.warning(
            "wandb: %s: logging offline to %s/wandb (`wandb sync` uploads it later; set WANDB_MODE to choose)",
            reason,
            os.environ["WANDB_DIR"],
        )


def wandb_offline_reason(timeout: float = 5.0) -> str | None:
    """
    Why wandb cannot log online from here, or `None`: no API key (`WANDB_API_KEY`, an identity token file, or the
    `~/.netrc` entry `wandb login` writes), or no connection within `timeout` seconds to `WANDB_BASE_URL` (default
    `https://api.wandb.ai`). Whether the key is valid is left to wandb.
    """
    import netrc
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    has_key = bool(os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"))
    if not has_key:
        try:
            has_key = netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
        except (OSError, netrc.NetrcParseError):
            has_key = False
    if not has_key:
        return "no API key (set WANDB_API_KEY or run `wandb login`)"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"{host}:{port} cannot be reached ({error.strerror or type(error).__name__})"
    return None
