"""
Checks of what the user gave that can be made before a model loads: data files, prompts, output folder, settings.

Each check raises [`UsageError`] with one line that names the file (and line or row) or the field, and the fix. They
exist because the libraries underneath find these mistakes late or say them badly: PyYAML's parser error is a
52-line traceback through TrlParser; `datasets` loads a JSON-lines file with non-UTF-8 bytes and fails only when the
bad row is read, at some training step, and an empty file ends in an `IndexError`; a negative learning rate is found
when the optimizer is built, after the model has loaded; an `output_dir` that cannot be written to fails at the first
checkpoint.
"""

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UsageError


def _row_error(path, row, line, problem):
    where = f"{path}, row {row}" + (f" (line {line})" if line != row else "")
    return UsageError(f"{where}: {problem}")


def _check_json_lines(path: Path, raw: bytes) -> None:
    row = 0
    for line_number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        row += 1
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _row_error(
                path,
                row,
                line_number,
                f"byte 0x{line[exc.start]:02x} at column {exc.start + 1} is not UTF-8: save the file as UTF-8",
            ) from None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise _row_error(path, row, line_number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise _row_error(path, row, line_number, f"a {type(value).__name__}, expected a JSON object per line")


def _check_json(path: Path, raw: bytes) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: byte 0x{raw[exc.start]:02x} is not UTF-8: save the file as UTF-8") from None
    try:
        json.loads(text)
    except ValueError as exc:
        # a .json file may also hold one object per line, which `datasets` reads as JSON lines
        if text.lstrip().startswith("{") and exc.msg == "Extra data":
            _check_json_lines(path, raw)
            return
        raise UsageError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None


def check_data_file(path: str | os.PathLike) -> None:
    """
    Refuse a local data file that is empty, not UTF-8 or not valid JSON / parquet, naming the file and the row.

    `.jsonl` files are checked row by row (a row is a non-blank line); `.json` files as one document; `.parquet`
    files by their footer (row count). Other paths (folders, Hub ids) are left to `datasets`.

    Raises:
        UsageError: e.g. `data.jsonl, row 2: byte 0xff at column 13 is not UTF-8: save the file as UTF-8`.
    """
    path = Path(path)
    if not path.is_file():
        return
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            num_rows = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise UsageError(f"{path}: not a readable parquet file ({exc})") from None
        if num_rows == 0:
            raise UsageError(f"{path} has no rows: a dataset needs at least one row with 'prompt' and 'solution'")
        return
    if suffix not in (".json", ".jsonl"):
        return
    raw = path.read_bytes()
    if not raw.strip():
        raise UsageError(f"{path} is empty: a dataset needs at least one row with 'prompt' and 'solution'")
    (_check_json_lines if suffix == ".jsonl" else _check_json)(path, raw)


def check_prompts(dataset, source: str) -> None:
    """Refuse rows whose `prompt` is missing or empty, naming the first such row (counted from 1)."""
    for row, prompt in enumerate(dataset["prompt"], start=1):
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise UsageError(f"{source}, row {row}: the prompt is empty; every row needs a prompt to generate from")


def check_output_dir(output_dir: str | os.PathLike) -> None:
    """
    Refuse an `output_dir` that is a file or cannot be written to; create it otherwise.

    Raises:
        UsageError: `output_dir: ... is a file, not a folder` or `output_dir: cannot write to ...`.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output_dir: {path} is a file, not a folder: choose another output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"output_dir: cannot write to {path} ({reason}): choose a folder you can write to") from None


def check_free_space(output_dir: str | os.PathLike, weight_bytes: int, num_parameters: int) -> None:
    """
    Refuse an `output_dir` whose disk cannot hold one checkpoint: the weights (`weight_bytes` as stored) and the
    AdamW state, two float32 moments for each of `num_parameters` (a lower bound: DeepSpeed adds its own copies).

    Raises:
        UsageError: `output_dir: ... has X MB free, but one checkpoint ... needs about Y MB ...`.
    """
    need = weight_bytes + 8 * num_parameters
    free = shutil.disk_usage(output_dir).free
    if free < need:
        raise UsageError(
            f"output_dir: {output_dir} has {free / 2**20:.1f} MB free, but one checkpoint of this model needs about "
            f"{need / 2**20:.1f} MB (weights + AdamW state): free some space or choose an output_dir on a larger disk"
        )


def check_training_args(training_args) -> None:
    """
    Refuse training settings that would train nothing, diverge at once, fail at the first generation or at the first
    save, before the model loads: every check of `training_args` alone, `output_dir` included ([`check_output_dir`]).
    The sampling fields are checked by [`~fipo_trl.evaluation.generation.Sampling`], as in `fipo-trl eval` and the
    evaluation callback.

    Raises:
        UsageError: naming the field, e.g. `max_steps: 0 trains nothing; ...`.
    """
    from ..evaluation.generation import Sampling

    if training_args.max_steps == 0:
        raise UsageError("max_steps: 0 trains nothing; set max_steps > 0 (or -1 to train num_train_epochs epochs)")
    epochs = training_args.num_train_epochs
    if training_args.max_steps < 0 and not (math.isfinite(epochs) and epochs > 0):
        # transformers trains ceil(num_train_epochs × steps per epoch) steps: 0 epochs is 0 steps, and a final model
        raise UsageError(
            f"num_train_epochs: {epochs:g} trains nothing with max_steps {training_args.max_steps}; set "
            "num_train_epochs > 0, or max_steps > 0"
        )
    learning_rate = training_args.learning_rate
    if not math.isfinite(learning_rate) or learning_rate < 0:
        raise UsageError(f"learning_rate: {learning_rate} must be a finite number >= 0 (the quickstart uses 5e-5)")
    if training_args.max_completion_length is None or training_args.max_completion_length < 1:
        raise UsageError(f"max_completion_length: {training_args.max_completion_length} must be >= 1")
    # TRL divides the logits by the temperature, and transformers / vLLM refuse these only at generation
    Sampling(
        temperature=training_args.temperature,
        top_p=training_args.top_p,
        top_k=training_args.top_k,
        min_p=training_args.min_p,
        max_tokens=training_args.max_completion_length,
    )
    check_output_dir(training_args.output_dir)
