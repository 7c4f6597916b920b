"""Shared offline fixtures: a tiny Qwen2 policy with a character tokenizer, built locally (no hub access)."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from fipo_trl import tiny_model  # noqa: E402


def build_tiny_model(path, seed=0):
    """
    Save a 2-layer Qwen2 (d=32, untied head) and a character tokenizer over every byte, with a ChatML chat template,
    to `path`; return `path` as a string. Any text encodes (one token per byte), so benchmark-style prompts work.
    """
    tokenizer = tiny_model.build_tokenizer(
        None,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>", "<unk>"),
        eos_token="<|im_end|>",
        model_max_length=512,
        chat_template=tiny_model.CHAT_TEMPLATE,
    )
    model = tiny_model.build_model(
        tokenizer,
        seed,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return tiny_model.save_tiny_model(path, tokenizer, model)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path to a saved tiny Qwen2 policy with its tokenizer (shared by the whole test session: do not modify)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))
