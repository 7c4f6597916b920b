"""
Which `checkpoint-N` folder a run can resume from, and a marker that makes a checkpoint look complete only when it is.

transformers' `Trainer._save_checkpoint` writes straight into `output_dir/checkpoint-N` (weights, then optimizer,
scheduler and RNG states, then `trainer_state.json`), with no temporary folder or rename, and its
`get_last_checkpoint` picks the highest N whatever the folder holds. A run killed during a save therefore leaves a
newest folder that is empty, lacks `trainer_state.json` or holds a truncated file, and resuming from it fails.

[`CheckpointMarkerCallback`] writes `checkpoint_complete.json` into a checkpoint after everything else of that save
has been written (callbacks' `on_save` runs after `_save_checkpoint`, also after a subclass's additions), listing
every file with its size. [`incomplete_reason`] then says what is wrong with a folder, and
[`last_complete_checkpoint`] skips incomplete folders with a warning. Folders from runs that wrote no markers (plain
TRL, older fipo-trl) are judged by `trainer_state.json` and the weights alone; once a folder has markers, a
checkpoint without one is a save that did not finish.
"""

import json
import logging
import os
import re
from pathlib import Path

from transformers import TrainerCallback


logger = logging.getLogger(__name__)

MARKER_NAME = "checkpoint_complete.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR + "-" + global step
# what `Trainer.save_model` writes as weights: a full model (one file or an index of shards), a PEFT adapter, or a
# DeepSpeed engine state (`global_step*` folder) when ZeRO-3 does not gather 16-bit weights
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, newest (highest N) first; `[]` when there is none."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    folders = [path for path in output_dir.iterdir() if CHECKPOINT_PATTERN.match(path.name) and path.is_dir()]
    return sorted(folders, key=lambda path: int(CHECKPOINT_PATTERN.match(path.name).group(1)), reverse=True)


def incomplete_reason(
    checkpoint: str | os.PathLike, marker_required: bool = False, for_training: bool = True
) -> str | None:
    """
    What is missing from a checkpoint folder, or `None` when a run can resume from it.

    Args:
        checkpoint (`str` or `os.PathLike`):
            A `checkpoint-N` folder.
        marker_required (`bool`, *optional*, defaults to `False`):
            Treat a folder without `checkpoint_complete.json` as incomplete (its run wrote markers, so this save did
            not finish).
        for_training (`bool`, *optional*, defaults to `True`):
            Resuming training needs `trainer_state.json`; loading the model (`fipo-trl eval`) needs only the weights.

    Returns:
        `str` or `None`: e.g. `"no trainer_state.json"`, `"model.safetensors has 120 bytes, the save wrote 4096"`.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return "not a folder"
    marker = checkpoint / MARKER_NAME
    if marker.is_file():
        try:
            sizes = json.loads(marker.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            return f"{MARKER_NAME} is unreadable"
        for name, size in sizes.items():
            path = checkpoint / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, the save wrote {size}"
    state = checkpoint / "trainer_state.json"
    if for_training and not state.is_file():
        return "no trainer_state.json"
    try:
        if for_training:
            json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (ValueError, KeyError, TypeError):
        return "trainer_state.json is truncated or not valid JSON"
    if not any((checkpoint / name).is_file() for name in WEIGHT_FILES) and not any(checkpoint.glob("global_step*")):
        return f"no model weights ({', '.join(WEIGHT_FILES[:2])}, ...)"
    if marker_required and not marker.is_file():
        return f"no {MARKER_NAME} (the save did not finish)"
    return None


def last_complete_checkpoint(
    output_dir: str | os.PathLike, quiet: bool = False, for_training: bool = True
) -> str | None:
    """
    The newest `checkpoint-N` of `output_dir` that a run can resume from, warning about each newer incomplete one.

    Args:
        output_dir (`str` or `os.PathLike`):
            A training run's `output_dir`.
        quiet (`bool`, *optional*, defaults to `False`):
            Skip incomplete checkpoints without a warning (for reporting where a run stands, not resuming it).
        for_training (`bool`, *optional*, defaults to `True`):
            `False` to load the model only: a checkpoint then needs its weights, not `trainer_state.json`.

    Returns:
        `str` or `None`: the folder, or `None` when `output_dir` holds no complete checkpoint.
    """
    folders = checkpoint_folders(output_dir)
    marker_required = any((folder / MARKER_NAME).is_file() for folder in folders)
    skipped = []
    for folder in folders:
        reason = incomplete_reason(folder, marker_required=marker_required, for_training=for_training)
        if reason is None:
            if skipped and not quiet:
                logger.warning(
                    "Skipping incomplete checkpoint(s), a save that did not finish: %s. Using %s.",
                    "; ".join(skipped),
                    folder,
                )
            return str(folder)
        skipped.append(f"{folder.name}: {reason}")
    if skipped and not quiet:
        logger.warning("No complete checkpoint in %s: %s.", output_dir, "; ".join(skipped))
    return None


def write_marker(checkpoint: str | os.PathLike) -> None:
    """Record every file of `checkpoint` with its size in `checkpoint_complete.json`, written atomically."""
    checkpoint = Path(checkpoint)
    files = {
        str(path.relative_to(checkpoint)): path.stat().st_size
        for path in sorted(checkpoint.rglob("*"))
        if path.is_file() and path.name != MARKER_NAME
    }
    tmp = checkpoint / f".{MARKER_NAME}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, checkpoint / MARKER_NAME)  # a reader sees no marker or the whole marker, never half of one


class CheckpointMarkerCallback(TrainerCallback):
    """
    Marks each checkpoint complete once its save has finished, so that [`last_complete_checkpoint`] can tell it from
    one a kill interrupted.

    Add it last (`trainer.add_callback`), so that its `on_save` runs after every other callback that writes into the
    checkpoint. Before a save into a folder that already exists (a resumed run re-reaching a step), its old marker is
    removed, so that a kill during the rewrite leaves no marker behind.
    """

    def on_step_end(self, args, state, control, **kwargs):
        # DefaultFlowCallback, which runs first, has decided whether this step saves
        if control.should_save and args.should_save:
            Path(args.output_dir, f"checkpoint-{state.global_step}", MARKER_NAME).unlink(missing_ok=True)

    on_epoch_end = on_step_end  # an epoch-end save decides there

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        # every process writes its own files into the checkpoint (RNG states, ...): list them once all have finished
        PartialState().wait_for_everyone()
        checkpoint = Path(args.output_dir, f"checkpoint-{state.global_step}")
        if args.should_save and checkpoint.is_dir():
            write_marker(checkpoint)


# config.json fields that fix the shapes of the weights: a checkpoint with other values cannot be loaded into the model
ARCHITECTURE_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "tie_word_embeddings",
)


def architecture_mismatch(checkpoint: str | os.PathLike, model_config_dir: str | os.PathLike) -> str | None:
    """
    How the model of `checkpoint` differs from the one in `model_config_dir` (both `config.json`), or `None`.

    Returns `None` when either folder has no `config.json` (a PEFT adapter checkpoint, a Hub id).
    """
    files = [Path(checkpoint) / "config.json", Path(model_config_dir) / "config.json"]
    if not all(file.is_file() for file in files):
        return None
    saved, model = (json.loads(file.read_text()) for file in files)
    differences = [
        f"{name} {saved.get(name)} vs {model.get(name)}"
        for name in ARCHITECTURE_FIELDS
        if saved.get(name) != model.get(name)
    ]
    if saved.get("architectures") != model.get("architectures"):
        differences.insert(0, f"architectures {saved.get('architectures')} vs {model.get('architectures')}")
    return ", ".join(differences) or None


# TrainingArguments fields that the optimizer's param groups carry: `optimizer.load_state_dict` restores them from the
# checkpoint (and LambdaLR's `base_lrs` the peak rate), so a changed value in the recipe does not take effect
OPTIMIZER_FIELDS = {  # field: (param-group key, index into a tuple value)
    "learning_rate": ("initial_lr", None),
    "weight_decay": ("weight_decay", None),
    "adam_beta1": ("betas", 0),
    "adam_beta2": ("betas", 1),
    "adam_epsilon": ("eps", None),
}


class ResumedSettingsCallback(TrainerCallback):
    """
    On a resumed run, one warning per optimizer setting whose value in the recipe differs from the one restored from
    the checkpoint (learning rate, weight decay, Adam betas and epsilon): the checkpoint's value is kept.

    Every other field applies from the first resumed step (FIPO/GRPO loss settings, sampling, `max_steps`, the shape
    of the learning-rate schedule, logging and saving); a changed batch geometry is reported by
    [`~fipo_trl.exact_resume.ExactResumeMixin`].
    """

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        # the Trainer restores optimizer and scheduler before on_train_begin
        if optimizer is None or not state.is_world_process_zero:
            return
        for name, (key, index) in OPTIMIZER_FIELDS.items():
            asked = getattr(args, name)
            # weight decay is 0 in the no-decay group (biases, norms) by design: compare the groups that decay
            groups = [g for g in optimizer.param_groups if key in g and (key != "weight_decay" or g[key] != 0)]
            kept = {g[key] if index is None else g[key][index] for g in groups}
            if name == "weight_decay" and not groups:
                kept = {0.0}
            if kept and asked not in kept:
                logger.warning(
                    "%s: the checkpoint's %s is kept, not %s (a resumed run restores the optimizer and scheduler "
                    "state of %s); to train with %s, start a fresh run from its weights (--model_name_or_path %s "
                    "with another output_dir)",
                    name,
                    ", ".join(f"{value:g}" for value in sorted(kept)),
                    f"{asked:g}",
                    self.checkpoint,
                    f"{asked:g}",
                    self.checkpoint,
                )
