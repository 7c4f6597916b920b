"""
[`RewardSpreadCallback`]: stop a GRPO-family run whose groups have had no reward spread for many generation batches.

Rewards that all score but give every completion of a group the same total (a `solution` that no answer can match, a
reward that ignores the completion) leave every advantage at 0: the run trains on nothing for as long as it is left
running. The per-reward guard of `guard.py` cannot see it, since it needs the group structure; TRL logs it as
`frac_reward_zero_std`, and this callback reads that log. `fipo-trl train` adds it; a library user opts in with
`callbacks=[RewardSpreadCallback()]`.
"""

import math

from transformers import TrainerCallback

from .guard import RewardError


# A group with no spread is normal (a problem every completion solves); every group of a batch is not, for long. A
# model with 90% accuracy and G=4 gives a group no spread with p = 0.9**4 + 0.1**4 ~ 0.66: 64 such groups in a row
# have p ~ 3e-12. Both counts must be reached, so that tiny batches (2 groups) do not stop a healthy run.
MAX_BATCHES_WITHOUT_SPREAD = 3
MIN_GROUPS_WITHOUT_SPREAD = 64


def generation_batches_between(args, start_step: int, end_step: int) -> int:
    """
    Generation batches TRL generated during optimizer steps `start_step + 1 ... end_step`.

    `GRPOTrainer` generates when its micro-step counter is a multiple of `steps_per_generation × num_iterations`, and
    an optimizer step is `gradient_accumulation_steps` micro-steps.
    """
    every = args.steps_per_generation * args.num_iterations
    start, end = start_step * args.gradient_accumulation_steps, end_step * args.gradient_accumulation_steps
    return math.ceil(end / every) - math.ceil(start / every)


class RewardSpreadCallback(TrainerCallback):
    """
    Raise [`RewardError`] when every group of `max_batches` generation batches (and at least `min_groups` groups) in
    a row had the same reward for all its completions.

    Touches no TRL hook: `on_log` reads the `frac_reward_zero_std` that `GRPOTrainer` logs (the fraction of groups
    without spread, from the gathered rewards, hence the same on every process), `state.global_step` and the batch
    geometry of `args`. A log whose value is 1 covers only batches without spread; its batches are counted from the
    steps since the previous log. With dynamic sampling the value is that of the kept groups, so the callback fires
    only when the filter had to fill the batch with groups without spread.

    Args:
        max_batches (`int`, *optional*, defaults to `MAX_BATCHES_WITHOUT_SPREAD`):
            Consecutive generation batches without spread after which the run stops.
        min_groups (`int`, *optional*, defaults to `MIN_GROUPS_WITHOUT_SPREAD`):
            Groups without spread those batches must hold at least.
    """

    def __init__(self, max_batches: int = MAX_BATCHES_WITHOUT_SPREAD, min_groups: int = MIN_GROUPS_WITHOUT_SPREAD):
        self.max_batches, self.min_groups = max_batches, min_groups
        self.batches_without_spread = self.groups_without_spread = 0
        self.logged_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.batches_without_spread = self.groups_without_spread = 0
        self.logged_step = state.global_step  # a resumed run counts from its first step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "frac_reward_zero_std" not in logs:  # a log without a generation batch, or an eval log
            return
        batches = max(1, generation_batches_between(args, self.logged_step, state.global_step))
        self.logged_step = state.global_step
        if logs["frac_reward_zero_std"] < 1:
            self.batches_without_spread = self.groups_without_spread = 0
            return
        self.batches_without_spread += batches
        self.groups_without_spread += batches * args.generation_batch_size // args.num_generations
        if self.batches_without_spread >= self.max_batches and self.groups_without_spread >= self.min_groups:
            raise RewardError(
                f"every group of the last {self.batches_without_spread} generation batches "
                f"({self.groups_without_spread} prompts) got the same reward for all its completions: every "
                "advantage is 0 and the run learns nothing; check the rewards against the data (does any "
                "completion ever match its solution?)",
                after_step=state.global_step,
            )
