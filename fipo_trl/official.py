"""
The official Qwen2.5-32B FIPO run (`recipe/fipo/run_fipo_qwen2.5_32b.sh`, docs/fipo.md §3.1), each number once.

Defaults, `fipo-trl check`'s comparison column, the rewards and the evaluation command read them from here, so that
no two modules can disagree on what the official run did.
"""

MAX_PROMPT_LENGTH = 2048  # tokens, left truncation
MAX_COMPLETION_LENGTH = 20480  # tokens
OVERLONG_BUFFER = 4096  # tokens of the soft overlong penalty before max_completion_length, factor 1.0
NUM_GENERATIONS = 16  # responses per prompt (G)
PROMPTS_PER_STEP = 512  # `train_batch_size`: prompts per training step (one generation batch)
PROMPTS_PER_MINI_BATCH = 64  # `ppo_mini_batch_size`: prompts per optimizer step
STEPS_PER_ROLLOUT = PROMPTS_PER_STEP // PROMPTS_PER_MINI_BATCH  # 8 optimizer steps per generation batch
PROMPTS_PER_ROUND = 2048  # `gen_batch_size`: prompts generated per dynamic-sampling round
MAX_NUM_GEN_BATCHES = 10  # dynamic-sampling rounds allowed per generation batch
