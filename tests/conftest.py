"""
Shared offline fixtures: a tiny Qwen2 policy (`fipo_trl.testing.tiny_model`) with a locally trained BPE tokenizer,
and `make_trainer`, which builds a real `FIPOTrainer` on it for a few CPU steps.
"""

import os
import socket


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402

import pytest  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from fipo_trl import FIPOConfig, FIPOTrainer  # noqa: E402
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


def build_tiny_model(path, seed=0, tie_word_embeddings=False):
    """Save a 2-layer Qwen2 (d=32, head untied by default) and the BPE tokenizer to `path`; return `path` as str."""
    tokenizer = build_bpe_tokenizer()
    model = tiny_model.build_model(
        tokenizer,
        seed,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
    )
    return tiny_model.save_tiny_model(path, tokenizer, model)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path to a saved tiny Qwen2 policy with its tokenizer (shared by the whole test session: do not modify)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tied_model_dir(tmp_path_factory):
    """The tiny policy with its head tied to the input embeddings, as Qwen2.5's small models and the quickstart's."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2-tied"), tie_word_embeddings=True)


# a run of the quickstart recipe in seconds: 16 completions per step (4 prompts × G=4), a new generation batch every
# 2 steps (step 2 is off-policy), 12-token completions, 64 training problems, a log at every step
FAST_RUN = {
    "per_device_train_batch_size": 16,
    "num_generations": 4,
    "steps_per_generation": 2,
    "max_completion_length": 12,
    "synthetic_train_size": 64,
    "logging_steps": 1,
}


def as_flags(fields):
    """`{"field": value}` as `--field value` command-line flags."""
    return [item for name, value in fields.items() for item in (f"--{name}", str(value))]


@pytest.fixture
def one_thread():
    """One torch thread for the test: the CPU is shared, and OpenMP threads spinning against other processes make a
    training step 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROMPTS = ["What is 12 + 30?", "The quick brown fox", "Simple is better", "Beautiful is better"]

# 4 steps of 4 completions (one prompt × 4), 2 optimizer steps per generation: odd steps on-policy, even ones stale
TINY_TRAINING = {
    "use_cpu": True,
    "bf16": False,
    "gradient_checkpointing": False,
    "report_to": "none",
    "save_strategy": "no",
    "learning_rate": 0.05,
    "per_device_train_batch_size": 4,
    "num_generations": 4,
    "max_completion_length": 8,
    "max_steps": 4,
    "logging_steps": 1,
    "steps_per_generation": 2,
    "seed": 0,
}


def reward_length(completions, **kwargs):
    return [len(c) / 10 for c in completions]


@pytest.fixture
def make_trainer(tiny_model_dir, tmp_path):
    """
    `make_trainer(output_dir=tmp_path, trainer_cls=FIPOTrainer, model=None, peft_config=None, **overrides)`: a
    trainer on the tiny model (or `model`) with `TINY_TRAINING` updated by `overrides`, rewarding completion length,
    on `PROMPTS` × 4.
    `trainer_cls=GRPOTrainer` (or a subclass) gets a `GRPOConfig` of the same fields.
    """
    from trl import GRPOConfig

    def make(output_dir=tmp_path, trainer_cls=FIPOTrainer, model=None, peft_config=None, **overrides):
        config_cls = FIPOConfig if issubclass(trainer_cls, FIPOTrainer) else GRPOConfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the on-policy warning of steps_per_generation=1 tests, for one
            args = config_cls(output_dir=str(output_dir), **{**TINY_TRAINING, **overrides})
            return trainer_cls(
                model=model or tiny_model_dir,
                reward_funcs=reward_length,
                args=args,
                train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
                peft_config=peft_config,
            )

    return make


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on, for a process group or a server of a test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def wandb_environment(monkeypatch):
    """Each test starts with the session's WANDB_DIR and WANDB_MODE, which a `fipo-trl train` in it may set."""
    for name in ("WANDB_DIR", "WANDB_MODE"):
        value = os.environ.get(name)
        monkeypatch.setenv(name, value or "")  # registers the restore of the value, or of its absence
        if value is None:
            monkeypatch.delenv(name)
