"""Builders for tests, benchmarks and the shipped tiny models: a small Qwen2 and its tokenizer (`tiny_model`)."""
