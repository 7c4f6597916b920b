"""Where a model is and how it is loaded, for `fipo-trl train` and `fipo-trl eval` alike.

A model is named by a shipped asset (`fipo_trl/assets/<name>`, found from any working directory), a local folder (a
model, a PEFT adapter, or a training output whose last `checkpoint-N` is used) or a Hub id.
"""

import json
from pathlib import Path

from .errors import UsageError


ASSETS_DIR = Path(__file__).parent / "assets"


def resolve_model_path(model_name_or_path: str) -> str:
    """
    The model to load for `model_name_or_path`.

    Args:
        model_name_or_path (`str`):
            `fipo_trl/assets/<model>` (the shipped models, also outside the repository, from the installed package),
            a local model or adapter folder, a training output folder, or a Hub id.

    Returns:
        `str`: a local folder, the last `checkpoint-N` of a training output, or the Hub id unchanged.

    Raises:
        UsageError: for a local path that does not exist or holds no model.
    """
    from .run.checkpoints import last_complete_checkpoint

    if not model_name_or_path:
        raise UsageError("model_name_or_path is not set")
    path = Path(model_name_or_path)
    if not path.exists() and path.parts[:2] == ("fipo_trl", "assets"):
        path = ASSETS_DIR.joinpath(*path.parts[2:])
    if not path.exists():
        # not local: a Hub id (`owner/name`, or a legacy `name` such as gpt2) is the only other thing it can be
        if model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1:
            raise UsageError(
                f"no such model directory: {model_name_or_path} (model_name_or_path takes a model folder or a Hub id)"
            )
        return model_name_or_path
    if not path.is_dir():
        raise UsageError(f"model path {model_name_or_path!r} is not a directory")
    if (path / "config.json").exists() or (path / "adapter_config.json").exists():
        return str(path)
    last_checkpoint = last_complete_checkpoint(path, for_training=False)
    if last_checkpoint is None:
        raise UsageError(f"{model_name_or_path!r} holds no model (config.json, adapter_config.json, checkpoint-N)")
    return last_checkpoint


def not_loadable(model_path: str, error: Exception) -> UsageError:
    """
    The [`UsageError`] for a model that did not load. A path that is not a local folder was taken for a Hub id: with
    the Hub off (`HF_HUB_OFFLINE=1`), the user far more likely mistyped a folder than meant an uncached Hub model, and
    the Hub's own message ("Repo id must be in the form ...", "outgoing traffic has been disabled") says neither.
    """
    from huggingface_hub import constants

    if not Path(model_path).exists() and constants.HF_HUB_OFFLINE:
        return UsageError(
            f"no such model directory: {model_path} (and no Hub model of that id is cached, which "
            "HF_HUB_OFFLINE=1 needs): fix model_name_or_path"
        )
    return UsageError(f"cannot load model_name_or_path={model_path!r}: {str(error).splitlines()[0]}")


def read_adapter_config(model_path: str) -> dict | None:
    """The PEFT `adapter_config.json` of `model_path` as a dict, or `None` for a full model."""
    adapter_config = Path(model_path) / "adapter_config.json"
    return json.loads(adapter_config.read_text()) if adapter_config.exists() else None


def tokenizer_path(model_path: str) -> str:
    """Where the tokenizer lives: the model directory, or the base model of an adapter saved without one."""
    adapter = read_adapter_config(model_path)
    if adapter is None or (Path(model_path) / "tokenizer_config.json").exists():
        return model_path
    return adapter["base_model_name_or_path"]


def load_tokenizer(model_path: str, revision: str | None = None):
    """The tokenizer of a resolved model path, or a [`UsageError`] naming the path that could not be loaded."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer_path(model_path), revision=revision)
    except (OSError, ValueError) as exc:
        raise not_loadable(model_path, exc) from None


def require_chat_template(tokenizer, source: str, plain_text: str = "a string `prompt` column") -> None:
    """
    Refuse chat-message prompts (from `source`) for a tokenizer without a chat template to render them; the message
    offers `plain_text` as the way to plain-text prompts.
    """
    if tokenizer.chat_template is None:
        raise UsageError(
            f"{source}: the prompts are chat messages but the tokenizer of {tokenizer.name_or_path} has no chat "
            f"template: use plain-text prompts ({plain_text}) or a model whose tokenizer has one"
        )


def load_model_and_tokenizer(model_path: str, dtype: str = "auto"):
    """
    Load a causal LM for generation: a full model, or a LoRA adapter merged into its base model.

    Args:
        model_path (`str`):
            Output of [`resolve_model_path`].
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weight dtype; `"auto"` keeps the checkpoint's.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`: the model in eval mode, on the visible GPUs if there are
        any, and its tokenizer.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .run.weight_files import check_weight_files

    adapter = read_adapter_config(model_path)
    base_path = model_path if adapter is None else adapter["base_model_name_or_path"]
    check_weight_files(model_path)  # a truncated file or NaN weights, named before from_pretrained fails on them
    if adapter is not None:
        check_weight_files(base_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(model_path))
        # device_map="auto" spreads a model too large for one GPU over all visible GPUs
        device_map = "auto" if torch.cuda.is_available() else None
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, device_map=device_map)
    except OSError as error:
        raise not_loadable(base_path, error) from error
    if adapter is not None:
        from peft import PeftModel

        # merged once up front: generation then runs at the speed of a plain model
        model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
    return model.eval(), tokenizer


def model_positions(model_path: str) -> int | None:
    """
    How many token positions the model at `model_path` (or an adapter's base model) is configured for: its
    `max_position_embeddings`, times the RoPE scaling factor when its config extends the context that way; `None`
    when the config cannot be read or names no such length.
    """
    from transformers import AutoConfig

    adapter = read_adapter_config(model_path)
    try:
        config = AutoConfig.from_pretrained(model_path if adapter is None else adapter["base_model_name_or_path"])
    except (OSError, ValueError):  # not cached offline, or an unknown architecture: the model load reports it
        return None
    config = config.get_text_config()
    positions = getattr(config, "max_position_embeddings", None)  # not every architecture has one (e.g. Mamba)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if positions is not None and kind != "default" and rope.get("factor"):
        original = rope.get("original_max_position_embeddings") or positions
        positions = max(positions, int(original * rope["factor"]))
    return positions


def longest_prompt(prompts: list, tokenizer) -> tuple[int, int]:
    """`(tokens, row)` of the longest prompt as TRL renders it (chat template with generation prompt), row from 1."""
    prompts = list(prompts)
    if isinstance(prompts[0], str):
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = ids["input_ids"]
    lengths = [len(row) for row in ids]
    row = max(range(len(lengths)), key=lengths.__getitem__)
    return lengths[row], row + 1


def check_model_fits(model_path: str, tokenizer, train_dataset, script_args, training_args, model_args) -> None:
    """
    Refuse a recipe that the model at `model_path` cannot run, before it loads.

    1. Positions: the longest training prompt (or `max_prompt_length` when set) plus `max_completion_length` must fit
       in the model's positions. Past them a model with learned positions fails at the first long sequence, and a
       RoPE model samples from positions it was never trained on, without a word.
    2. Disk: `output_dir` must have room for one checkpoint of a full fine-tune: the weights as stored plus AdamW's
       two float32 moments per parameter (`optimizer.pt`). A full disk otherwise ends the run at its first save.

    Raises:
        UsageError: naming the field to change.
    """
    from .run.preflight import check_free_space
    from .run.weight_files import weight_files

    positions = model_positions(model_path)
    if positions is not None:
        if script_args.max_prompt_length is not None:
            prompt, where = script_args.max_prompt_length, f"max_prompt_length {script_args.max_prompt_length}"
        else:
            prompt, row = longest_prompt(train_dataset["prompt"], tokenizer)
            where = f"the longest training prompt ({prompt} tokens, row {row})"
        completion = training_args.max_completion_length
        if prompt + completion > positions:
            fixes = [f"lower max_completion_length to {positions - prompt}"] if prompt < positions else []
            if completion < positions:
                fixes.append(f"set max_prompt_length to {positions - completion} or less")
            fix = " or ".join(fixes)
            raise UsageError(
                f"max_completion_length: {where} + max_completion_length {completion} = {prompt + completion} "
                f"tokens, more than the {positions} positions of {model_path}: {fix}"
            )
    if model_args.use_peft or not Path(model_path).is_dir():
        return  # an adapter's checkpoint is small; a Hub model's size is not known before it downloads
    files = weight_files(model_path)
    if files:
        check_free_space(training_args.output_dir, sum(path.stat().st_size for path in files), _num_parameters(files))


def _num_parameters(files) -> int:
    import math

    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return total
