"""Shared offline fixtures: a tiny Qwen2 policy (`fipo_trl.testing.tiny_model`) and a locally trained BPE tokenizer."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from fipo_trl.testing import tiny_model  # noqa: E402


CORPUS = [
    "Solve the following math problem step by step. The last line of your response should be of the form Answer: 42",
    "What is 12 + 30? Let us add the numbers. Answer: 42",
    "The quick brown fox jumps over the lazy dog 0123456789 + - * / = ( ) { } \\frac \\boxed",
    "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.",
]


def build_bpe_tokenizer():
    """
    A ~300-token byte-level BPE trained on `CORPUS`, with a ChatML template. Unlike the character tokenizer of
    `fipo_trl.testing.tiny_model`, its tokens are 1 to many characters long, so a completion's length in characters
    varies with its tokens: some tests' rewards depend on that (test_dynamic_sampling's `reward_mostly_degenerate`).
    """
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>", padding_side="left"
    )
    tokenizer.chat_template = tiny_model.CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(path, seed=0):
    """Save a 2-layer Qwen2 (d=32, untied head) and the BPE tokenizer to `path`; return `path` as a string."""
    tokenizer = build_bpe_tokenizer()
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
