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
