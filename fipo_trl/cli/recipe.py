"""The recipe of `fipo-trl train` and `fipo-trl check`: a YAML file of fields, overridden by `--field value` flags.

`trl.TrlParser` splits the fields over three dataclasses, as open-r1's recipes do: [`FIPOScriptArguments`] (data,
rewards, the held-out check, evaluation during training), [`~fipo_trl.cli.recipe_classes.RecipeConfig`] (every
`GRPOConfig` / `TrainingArguments` field plus `fipo_*` and the dynamic-sampling fields) and `trl.ModelConfig`.
[`parse_recipe`] turns `RECIPE.yaml [--field value ...]` into the three, or raises a one-line [`UsageError`];
[`read_yaml_file`] and [`check_recipe_types`] read a YAML file and check its values' types before any dataclass sees
them.
"""

import ast
import contextlib
import dataclasses
import io
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from trl import ModelConfig, ScriptArguments

from ..errors import UsageError
from ..official import MAX_PROMPT_LENGTH, OVERLONG_BUFFER


USAGE = "usage: fipo-trl train RECIPE.yaml [--field value ...]   (e.g. fipo-trl train configs/quickstart.yaml)"


@dataclass
class FIPOScriptArguments(ScriptArguments):
    """
    Script arguments of `fipo-trl train`: which data, which rewards, and the held-out check around training.

    Parameters:
        dataset_name (`str`, *optional*, defaults to `"synthetic"`):
            `"synthetic"` for the built-in generator ([`fipo_trl.data.synthetic`]), DAPO-Math-17k (its Hub id or a
            local copy whose name contains "dapo-math", read by [`fipo_trl.data.math_datasets.load_dapo_math`]), or any
            local file (`.json`, `.jsonl`, `.parquet`), folder or Hub dataset whose rows have a `prompt` (string or
            chat messages) and a `solution` (the reference answer) column.
        reward_funcs (`list[str]`, *optional*, defaults to `["dapo_accuracy"]`):
            Reward functions, by name (`dapo_accuracy`, `math_verify`, `soft_overlong`) or dotted import path
            (`my_pkg.rewards.my_reward`). `soft_overlong` is TRL's DAPO overlong penalty with
            `max_completion_len=max_completion_length` and `soft_punish_cache=overlong_buffer_length`. The first one
            is the correctness reward: it is logged as `accuracy` (fraction > 0) and scores the held-out check.
        overlong_buffer_length (`int`, *optional*, defaults to `4096`):
            The buffer of the `soft_overlong` reward (official DAPO/FIPO: 4096 with 20480 completion tokens).
        max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
            Prompts longer than this many tokens lose their beginning (left truncation, official: 2048). `None`
            keeps prompts whole.
        synthetic_task (`str`, *optional*, defaults to `"addition"`):
            Task of the synthetic generator: `"addition"`, `"linear"` or `"long_sum"` (the reasoning testbed).
        synthetic_digits (`int`, *optional*, defaults to `2`):
            Digits per operand of the synthetic problems.
        synthetic_train_size (`int`, *optional*, defaults to `4096`):
            Number of synthetic training problems.
        synthetic_seed (`int`, *optional*, defaults to `0`):
            Seed of the synthetic problems (training and held-out sets never share a prompt).
        heldout_size (`int`, *optional*, defaults to `0`):
            Problems of the held-out set (synthetic, or `dataset_test_split`) on which accuracy is measured before
            and after training, sampling one completion each as in training. A source without a test split (a single
            file, DAPO-Math-17k) gives this many of its rows (drawn with seed 0), which are then not trained on.
            `0` skips the check.
        token_view (`bool`, *optional*, defaults to `True`):
            At each logging step, save one completion as HTML with every token coloured by its influence weight
            (under `output_dir/token_view/`, and to wandb when it is on).
        math_eval_datasets (`list[str]`, *optional*, defaults to `[]`):
            Benchmarks evaluated during training with `fipo-trl eval`'s protocol ([`MathEvalCallback`]):
            `aime2024`, `aime2025`, `math500`, `gsm8k` or local problem/answer files. Logged as
            `eval_<name>/avg@k`, `cons@k`, `pass@k`, like the official `val-core/<source>/acc/mean@32`.
        math_eval_steps (`int`, *optional*, defaults to `5`):
            Evaluate every this many optimizer steps (official 32B: `test_freq=5` training steps).
        math_eval_k (`int`, *optional*, defaults to `32`):
            Samples per problem (paper: 32, at temperature 1.0 and top-p 0.7; up to `max_completion_length` tokens).
        console_metrics (`str`, *optional*, defaults to `"brief"`):
            What each training log prints on the console: `"brief"` the step, loss, reward, accuracy, mean length,
            policy drift (`fipo/abs_log_ratio_mean`), mean FIPO weight and PPO clip fraction
            ([`~fipo_trl.callbacks.BRIEF_METRICS`]); `"full"` every metric, as transformers prints them. Either way
            wandb and `trainer.state.log_history` keep every metric; evaluation logs are printed whole.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Start a fresh run in an `output_dir` that holds checkpoints of an earlier run, deleting them (the
            `TrainingArguments` field of this name is gone from transformers 5). Without it such a run is refused;
            `--resume_from_checkpoint auto` continues the earlier run instead.
        preemption_grace_period (`float`, *optional*, defaults to `20`):
            Seconds from a SIGTERM (Slurm preemption or time limit) to the end of the run: the current step
            finishes and a checkpoint is saved if both fit, else the run ends from its last checkpoint. Keep it under
            the cluster's SIGTERM-to-SIGKILL delay (Slurm's `KillWait`, 30 s by default); docs/cluster-jobs.md. 0
            stops at once, abandoning the step (the run resumes from its last checkpoint); a negative value is refused.
        launch (`dict` or `None`, *optional*, defaults to `None`):
            The launch the recipe is written for, with accelerate's names: `config_file` (the accelerate config),
            `num_processes` (training processes over all nodes) and `num_machines`. `fipo-trl check RECIPE` reports
            the geometry, memory and warnings of this launch unless its flags say otherwise; `fipo-trl train` takes
            its processes from the launcher and does not read it.
    """

    dataset_name: str = field(
        default="synthetic",
        metadata={"help": "'synthetic', DAPO-Math-17k (Hub id or copy) or a file/folder/Hub id with prompt+solution."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["dapo_accuracy"],
        metadata={"help": "Reward names (dapo_accuracy, math_verify, soft_overlong) or dotted import paths."},
    )
    overlong_buffer_length: int = field(
        default=OVERLONG_BUFFER,
        metadata={"help": f"Buffer of the soft_overlong reward (official DAPO/FIPO: {OVERLONG_BUFFER})."},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": f"Left-truncate prompts to this many tokens (official: {MAX_PROMPT_LENGTH}); None keeps all."
        },
    )
    synthetic_task: str = field(
        default="addition", metadata={"help": "Synthetic task: 'addition', 'linear' or 'long_sum'."}
    )
    synthetic_digits: int = field(default=2, metadata={"help": "Digits per operand of the synthetic problems."})
    synthetic_train_size: int = field(default=4096, metadata={"help": "Number of synthetic training problems."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic training/held-out problems."})
    heldout_size: int = field(
        default=0, metadata={"help": "Held-out problems scored before and after training (0 skips the check)."}
    )
    token_view: bool = field(
        default=True, metadata={"help": "Save a per-token influence-weight HTML view at each logging step."}
    )
    math_eval_datasets: list[str] = field(
        default_factory=list,
        metadata={"help": "Benchmarks evaluated during training (aime2024, aime2025, math500, gsm8k or a file)."},
    )
    math_eval_steps: int = field(default=5, metadata={"help": "Evaluate every this many steps (official: 5)."})
    math_eval_k: int = field(default=32, metadata={"help": "Samples per problem of the evaluation (paper: 32)."})
    console_metrics: Literal["brief", "full"] = field(
        default="brief",
        metadata={"help": "Console: 'brief' (loss, reward, accuracy, length, drift, weight, clip) or 'full'."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start fresh in an output_dir with checkpoints, deleting them."}
    )
    preemption_grace_period: float = field(
        default=20.0, metadata={"help": "Seconds from SIGTERM to exit: finish the step, save if it fits (Slurm)."}
    )
    launch: dict | None = field(
        default=None,
        metadata={"help": "The launch the recipe is written for (config_file, num_processes, num_machines): check's."},
    )

    def __post_init__(self):
        # a YAML value is not checked against the choices by argparse
        if self.console_metrics not in ("brief", "full"):
            raise UsageError(f"console_metrics must be 'brief' or 'full', got {self.console_metrics!r}")
        unknown = sorted(set(self.launch or {}) - {"config_file", "num_processes", "num_machines"})
        if unknown:
            raise UsageError(
                f"launch: unknown key(s) {', '.join(unknown)}; use config_file, num_processes, num_machines"
            )
        grace = self.preemption_grace_period
        if not (isinstance(grace, (int, float)) and math.isfinite(grace) and grace >= 0):
            raise UsageError(
                f"preemption_grace_period: {grace} must be a number of seconds >= 0 (0 stops at once on SIGTERM; keep "
                "it under the scheduler's SIGTERM-to-SIGKILL delay, Slurm's KillWait: 30 s by default)"
            )


def make_parser():
    """The `TrlParser` of a recipe: (FIPOScriptArguments, RecipeConfig, ModelConfig)."""
    from trl import TrlParser

    from .recipe_classes import RecipeConfig

    return TrlParser((FIPOScriptArguments, RecipeConfig, ModelConfig), prog="fipo-trl train")


def join_negative_values(argv):
    """
    `--field -1e-4` as `--field=-1e-4`: argparse reads a token that starts with "-" and is not a plain number
    (`-1e-4`, `-.5e3`) as a flag, and then finds the field without its value.
    """
    joined = []
    for arg in argv:
        if joined and joined[-1].startswith("--") and "=" not in joined[-1] and _is_negative_number(arg):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def _is_negative_number(arg):
    if not arg.startswith("-"):
        return False
    try:
        float(arg)
    except ValueError:
        return False
    return True


def parse_recipe(argv):
    """
    Parse `RECIPE.yaml [--field value ...]` (or `--config RECIPE.yaml ...`) into the three dataclasses.

    Returns:
        `tuple[FIPOScriptArguments, RecipeConfig, ModelConfig]`: CLI flags override the YAML.

    Raises:
        UsageError: for an unknown field, a bad value, or a recipe file that cannot be read.
    """
    argv = join_negative_values(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--config", *argv]  # `fipo-trl train recipe.yaml` as in open-r1's launch lines
    parser = make_parser()
    path, recipe = None, {}
    if "--config" in argv:
        # TrlParser's own reading of a malformed file ends in a 52-line traceback: read it first, for file:line
        path = argv[argv.index("--config") + 1]
        recipe = read_yaml_file(path)
        check_recipe_types(path, recipe, parser.dataclass_types)
    stderr = io.StringIO()
    try:
        # argparse prints a page of usage before its one-line error: keep only that line
        with contextlib.redirect_stderr(stderr):
            *parsed, config_unknown, cli_unknown = parser.parse_args_and_config(
                argv, return_remaining_strings=True, separate_remaining_strings=True
            )
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        lines = stderr.getvalue().strip().splitlines()
        # `fipo-trl` prefixes its own "fipo-trl train: error:"; argparse's would make it appear twice
        message = lines[-1].removeprefix(f"{parser.prog}: error: ") if lines else f"invalid arguments: {argv}"
        raise UsageError(message) from None
    except (ValueError, TypeError) as exc:  # a config's own check: one line, its origin kept for FIPO_TRL_DEBUG=1
        defaults = {f.name: f.default for cls in parser.dataclass_types for f in dataclasses.fields(cls)}
        nulls = [name for name, value in recipe.items() if value is None and defaults.get(name) is not None]
        if isinstance(exc, TypeError) and nulls:  # the types of every other value were checked: a null it cannot take
            raise UsageError(
                f"{path}: {', '.join(nulls)}: null is not a value the config can use here ({exc}): give a value, or "
                "delete the line for the default"
            ) from exc
        raise UsageError(str(exc).splitlines()[0]) from exc
    unknown = [arg[2:] for arg in [*config_unknown, *cli_unknown] if arg.startswith("--")]
    if unknown or cli_unknown:
        raise UsageError(f"unknown recipe field(s): {', '.join(unknown) or ' '.join(cli_unknown)}")
    return tuple(parsed)


# --- `fipo-trl train --help` ----------------------------------------------------------------------------------------


def fipo_config_fields():
    """
    `(name, default, help)` of the fields that [`~fipo_trl.FIPOConfig`] declares itself (its FIPO fields and the
    GRPOConfig defaults it changes) and of [`~fipo_trl.DynamicSamplingConfig`], read from their sources: importing
    them would import TRL's GRPOConfig and torch, seconds that `--help` should not take.
    """
    from .. import official

    fields = []
    for source, name in (("config.py", "FIPOConfig"), ("dynamic_sampling/config.py", "DynamicSamplingConfig")):
        tree = ast.parse((Path(__file__).parents[1] / source).read_text())
        config = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == name)
        for node in config.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Call)):
                continue
            keywords = {keyword.arg: keyword.value for keyword in node.value.keywords}
            default = ast.unparse(keywords["default"]) if "default" in keywords else "required"
            if default.startswith("official."):  # a number of the official run, named once in official.py
                default = repr(getattr(official, default.removeprefix("official.")))
            metadata = ast.literal_eval(keywords["metadata"]) if "metadata" in keywords else {}
            fields.append((node.target.id, default, metadata.get("help", "")))
    return fields


def short_help(recipe_path=None) -> str:
    """
    The first screen of `fipo-trl train [RECIPE] --help`: how to call it, the recipe's own fields and values when one
    is given, the script fields and FIPOConfig's own fields with their defaults.
    """

    def rows(fields):
        return [f"  --{name} {default}".ljust(40) + f" {help_text}" for name, default, help_text in fields]

    inherited = {f.name for f in dataclasses.fields(ScriptArguments)}
    script_fields = [
        (f.name, repr(f.default if f.default is not dataclasses.MISSING else f.default_factory()), f.metadata["help"])
        for f in dataclasses.fields(FIPOScriptArguments)
        if f.name not in inherited or f.name == "dataset_name"
    ]
    recipe_lines = []
    if recipe_path is not None:
        values = [f"  --{name} {value!r}" for name, value in read_yaml_file(recipe_path).items()]
        recipe_lines = [f"fields of {recipe_path} (override any with --field value):", *values, ""]
    lines = [
        USAGE,
        "",
        *recipe_lines,
        "Train FIPO from a YAML recipe. Every field below (and every GRPOConfig / TrainingArguments / trl.ModelConfig",
        "field) can be set in the YAML or overridden on the command line with --field value.",
        "",
        "script fields (FIPOScriptArguments: data, rewards, held-out check):",
        *rows(script_fields),
        "  also from trl.ScriptArguments: --dataset_config, --dataset_train_split, --dataset_test_split",
        "",
        "FIPO fields, changed GRPOConfig defaults, dynamic sampling (FIPOConfig, DynamicSamplingConfig):",
        *rows(fipo_config_fields()),
        *rows([("steps_per_generation", "None", "None: 8 × gradient_accumulation_steps (official: 8 per batch).")]),
        "",
        "model fields (trl.ModelConfig): --model_name_or_path, --dtype, --attn_implementation, --use_peft, ...",
        "All GRPOConfig, TrainingArguments and ModelConfig fields: fipo-trl train --help-all",
        "Check the batch geometry of a recipe without training: fipo-trl check RECIPE.yaml",
    ]
    return "\n".join(lines)


def format_yaml_error(path: str | os.PathLike, exc) -> str:
    """
    `path:line:column: what is wrong` for a PyYAML error; lines and columns count from 1, as editors do.

    Example: `recipe.yaml:3:4: expected ',' or ']', but got ':' (in the flow sequence that starts at line 2)`.
    """
    import yaml

    mark = getattr(exc, "problem_mark", None)
    if not isinstance(exc, yaml.MarkedYAMLError) or mark is None:
        return f"{path}: not valid YAML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    where = f"{path}:{mark.line + 1}:{mark.column + 1}"
    problem = exc.problem or "not valid YAML"
    context_mark = exc.context_mark
    if exc.context and context_mark is not None and context_mark.line != mark.line:
        return f"{where}: {problem} ({exc.context}, which starts at line {context_mark.line + 1})"
    return f"{where}: {problem}" + (f" ({exc.context})" if exc.context else "")


class StrictLoader(yaml.SafeLoader):
    """
    PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last value, silently) and an
    unquoted value with `#` in it: YAML starts a comment only after a space, so `output_dir: out# note` is a folder
    named "out# note".
    """

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key} is given twice (first at line {seen[key] + 1}): keep one", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_scalar(self, node):
        if node.style is None and "#" in node.value:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{node.value!r} has a '#' with no space before it, which YAML keeps in the value: write ' #' for a "
                "comment, or quote the value",
                node.start_mark,
            )
        return super().construct_scalar(node)


def read_yaml_file(path: str | os.PathLike, what: str = "recipe") -> dict:
    """
    Read a YAML mapping of `field: value`, refusing a missing file, non-UTF-8 text, malformed YAML, a non-mapping,
    and what PyYAML accepts but never means what it says ([`StrictLoader`]): a key given twice, an unquoted `#`.

    Args:
        path (`str` or `os.PathLike`):
            The YAML file.
        what (`str`, *optional*, defaults to `"recipe"`):
            What the file is, for the messages ("recipe", "accelerate config").

    Returns:
        `dict`: the parsed mapping (empty for an empty file).

    Raises:
        UsageError: naming the file, and the line and column for a YAML error.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        byte = raw[exc.start]
        raise UsageError(f"{path}:{line}: byte 0x{byte:02x} is not UTF-8: save the {what} as UTF-8") from None
    try:
        content = yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise UsageError(format_yaml_error(path, exc)) from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UsageError(f"{path}: the {what} must be 'field: value' lines, not a {type(content).__name__}")
    return content


def check_recipe_types(path: str | os.PathLike, recipe: dict, dataclass_types) -> None:
    """
    Refuse a recipe value whose YAML type does not fit its field's annotation, naming the file, field and type.

    `TrlParser` hands YAML values to the dataclasses as they are: argparse converts and checks only strings, so
    `reward_funcs: dapo_accuracy` (a string for a list) was iterated letter by letter and `learning_rate: [1]`
    reached the optimizer. Strings are left to argparse, which converts them (`5e-5`, which YAML reads as a string)
    or names the field; annotations this check does not know are not checked.

    Args:
        path (`str` or `os.PathLike`):
            The recipe file, for the message.
        recipe (`dict`):
            Its `field: value` mapping.
        dataclass_types (`tuple[type, ...]`):
            The dataclasses the recipe fills (keys of none of them are left to the unknown-field check).

    Raises:
        UsageError: e.g. `recipe.yaml: reward_funcs: 'dapo_accuracy' is a str, expected list[str] ([a, b] in YAML)`.
    """
    hints = {}
    for cls in dataclass_types:
        hints.update(typing.get_type_hints(cls))
    for name, value in recipe.items():
        if name in hints and not _fits(value, hints[name]):
            expected = _type_name(hints[name])
            hint = " ([a, b] in YAML)" if "list[" in expected else ""
            kind = type(value).__name__
            article = "an" if kind[0] in "aeiou" else "a"
            raise UsageError(f"{path}: {name}: {value!r} is {article} {kind}, expected {expected}{hint}")


def _fits(value, annotation) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(item, args[0]) for item in value if args)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation in (bool, int, float):
        if isinstance(value, str):
            return True  # argparse converts a string default with the field's type, or names the field
        if annotation is bool:
            return isinstance(value, bool)
        numbers = (int,) if annotation is int else (int, float)
        return isinstance(value, numbers) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True  # enums, configs of other libraries: left to their own checks


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
