"""
Tiny Qwen2 models built locally from a seed: no download, the same weights on every run of one torch version.

One builder for everything that needs a small real model: the quickstart's shipped policy
(`scripts/build_tiny_model.py`, which then pre-trains it), the test suite's policy (`tests/conftest.py`) and the
benchmarks. The tokenizer is a character tokenizer: one token per character, written as a byte-level BPE without
merges, so that `AutoTokenizer` loads it unchanged (Qwen2 checkpoints map to a byte-level BPE tokenizer).

    tokenizer = build_tokenizer()                       # the quickstart's 26 characters
    tokenizer = build_tokenizer(None, chat_template=CHAT_TEMPLATE, ...)   # every byte: any text
    model = build_model(tokenizer, seed=0, hidden_size=32, num_hidden_layers=2)
"""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM


# The quickstart's alphabet: problems like "37+48=?" or "3x+5=20, x=?", answers "Answer: 85"
CHARACTERS = tuple("0123456789+-*=x?, :\n") + tuple(sorted(set("Answer")))
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<unk>")
# A ChatML template (Qwen's layout) for tests and benchmarks that need chat prompts
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(
    characters=CHARACTERS,
    special_tokens=SPECIAL_TOKENS,
    eos_token="<|endoftext|>",
    pad_token="<|pad|>",
    unk_token="<unk>",
    model_max_length=64,
    chat_template=None,
) -> PreTrainedTokenizerFast:
    """
    A character tokenizer: ids `0 … len(special_tokens) - 1` are the special tokens, then one id per character, in
    order; text decodes back unchanged.

    Args:
        characters (`Sequence[str]` or `None`, defaults to `CHARACTERS`):
            The vocabulary after the special tokens, one-byte (ASCII) characters; a character outside it encodes as
            `unk_token`. `None`: all 256 bytes, so that any UTF-8 text encodes (a non-ASCII character as 2-4 tokens).
        special_tokens (`Sequence[str]`, defaults to `SPECIAL_TOKENS`):
            Must contain `eos_token`, `pad_token` and `unk_token`.
        eos_token, pad_token, unk_token (`str`):
            pad must differ from eos, or TRL's completion mask would cut every completion at its first pad/eos.
        model_max_length (`int`, defaults to `64`):
            The longest input the tokenizer reports as supported (prompt + completion).
        chat_template (`str`, *optional*):
            A Jinja chat template, e.g. `CHAT_TEMPLATE`; none by default (the quickstart uses plain-text prompts).
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if characters is None:
        symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    else:
        wide = [char for char in characters if len(char.encode()) != 1]
        if wide:
            raise ValueError(f"characters must be one byte each (or None for every byte), got {wide}")
        symbols = [byte_level.pre_tokenize_str(char)[0][0] for char in characters]  # " " -> "Ġ", "\n" -> "Ċ"
    vocab = {token: i for i, token in enumerate([*special_tokens, *symbols])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk_token))
    backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    # the other special tokens (ChatML's <|im_start|>) must be registered too, or text spells them out char by char
    extra = [token for token in special_tokens if token not in (eos_token, pad_token, unk_token)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        padding_side="left",
        model_max_length=model_max_length,
        **({"additional_special_tokens": extra} if extra else {}),  # none for the quickstart: its files stay as built
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_model(
    tokenizer,
    seed,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=True,
    vocab_size=None,
    **config_kwargs,
) -> Qwen2ForCausalLM:
    """
    A randomly initialised Qwen2 for `tokenizer`, seeded by `seed` (`torch.manual_seed`, so the global RNG moves).

    The defaults are the quickstart policy's shapes (0.79M parameters with its tokenizer). `vocab_size` defaults to
    `len(tokenizer)`; a larger one leaves ids no text encodes to (as Qwen2.5's padded vocabulary does). Other
    `Qwen2Config` fields (e.g. `rope_theta`) pass through `config_kwargs`.
    """
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer) if vocab_size is None else vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **config_kwargs,
    )
    model = Qwen2ForCausalLM(config)
    # TRL and `generate` read eos/pad from here, not from the tokenizer
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


def save_tiny_model(path, tokenizer, model) -> str:
    """Save `model` and `tokenizer` to `path` (created if needed) as one loadable checkpoint; return `path` as str."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
