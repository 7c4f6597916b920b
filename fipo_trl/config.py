import warnings
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from . import official


# Official 32B script: ppo_mini_batch_size 64 of train_batch_size 512 prompts, i.e. 8 optimizer steps per rollout
OFFICIAL_STEPS_PER_ROLLOUT = official.STEPS_PER_ROLLOUT
FIPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def default_steps_per_generation(gradient_accumulation_steps: int) -> int:
    """
    FIPOConfig's `steps_per_generation` when neither it nor `generation_batch_size` is set: one generation batch
    feeds the official 8 optimizer steps (`8 × gradient_accumulation_steps` micro-steps).
    """
    return OFFICIAL_STEPS_PER_ROLLOUT * gradient_accumulation_steps


def is_on_policy(gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int) -> bool:
    """
    Whether every optimizer step is on-policy, so that log π_θ = log π_old, all FIPO weights are 1 and FIPO is
    exactly DAPO. It is TRL's own test (`GRPOTrainer` computes old log-probs only when it fails).
    """
    return gradient_accumulation_steps % (steps_per_generation * num_iterations) == 0


@dataclass
class FIPOConfig(GRPOConfig):
    r"""
    Configuration class for [`FIPOTrainer`].

    Inherits every parameter of [`~trl.GRPOConfig`]. The defaults below reproduce the official Qwen2.5-32B run
    (`recipe/fipo/run_fipo_qwen2.5_32b.sh` of qwenpilot/FIPO, paper Table 2) wherever TRL has the knob. The paper's
    7B pilot (Appendix B.2) used `fipo_clip_high_only=False` and `fipo_safety_threshold=3.0`: prefer those for small
    models. The official run's dynamic sampling has its own fields, [`~fipo_trl.DynamicSamplingConfig`], composed
    with this class by whoever wants the filter (`fipo-trl train` does).

    Parameters:
        > Changed GRPOConfig defaults

        loss_type (`str`, *optional*, defaults to `"dapo"`):
            Token-level clipped surrogates only: `"dapo"` (paper Eq. 8, global token mean), `"bnpo"` (token mean of
            each micro-batch, closest to the official verl aggregation), `"grpo"` or `"dr_grpo"`.
        epsilon (`float`, *optional*, defaults to `0.2`):
            Lower clip ε_low (32B script `clip_ratio_low`).
        epsilon_high (`float`, *optional*, defaults to `0.28`):
            Upper clip ε_high, DAPO clip-higher (32B script `clip_ratio_high`).
        delta (`float`, *optional*, defaults to `10.0`):
            The dual-clip constant c (32B script `clip_ratio_c`). It caps the loss of negative-advantage tokens whose
            ratio exceeds c, leaves those tokens out of the Future-KL sum, and drops responses with two or more of
            them. Must be greater than `1 + epsilon_high`.
        beta (`float`, *optional*, defaults to `0.0`):
            No KL term (32B script `use_kl_loss=False`).
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Dropout would make log π_θ differ from log π_old even on-policy and feed noise into the Future-KL.
        steps_per_generation (`int` or `None`, *optional*, defaults to `None`):
            When neither this nor `generation_batch_size` is set, it becomes `8 × gradient_accumulation_steps`: one
            generation batch feeds 8 optimizer steps, as in the 32B script (512 prompts, mini-batches of 64). FIPO
            only differs from DAPO on those off-policy steps.

        > FIPO parameters

        fipo_decay_rate (`float`, *optional*, defaults to `32.0`):
            Half-life τ in tokens of the Future-KL discount `γ = 2^(−1/τ)` (32B script `decay_rate`; paper Table 6
            picks 32 for stable dynamics).
        fipo_clip_range (`float`, *optional*, defaults to `0.2`):
            ε_f, the clip of the influence weight `f = exp(FutureKL)` (32B script `future_kl_clip_ratio`). `0` selects
            the official unclipped mode, where f is only capped at 10.
        fipo_clip_high_only (`bool`, *optional*, defaults to `True`):
            `f ∈ [1, 1+ε_f]` if True (32B script), `f ∈ [1−ε_f, 1+ε_f]` if False (7B pilot). On the CPU reasoning
            testbed (docs/experiments.md, "Regime map") neither mode moved held-out accuracy or length beyond DAPO's
            seed spread at any drift, from near on-policy (mean |log π_θ − log π_old| 0.007 per token) to the drift
            (0.3-0.7) at which every method collapsed: with little drift the weights average ~1; with more, the
            Future-KL turns negative, so False sinks most weights to 1−ε_f (a smaller step) and True leaves them at 1
            and amplifies a few early tokens whatever their advantage. On that task a longer answer stops paying once
            the step-by-step format is learned; tasks where longer reasoning keeps paying were not measured.
        fipo_safety_threshold (`float`, *optional*, defaults to `10.0`):
            Negative-advantage tokens whose ratio exceeds it get f clamped to [0.8, 1] (32B script `safety_thresh`;
            7B pilot 3.0). At the default it equals `delta`, where it changes only the loss value, not the gradient.
    """

    loss_type: str = field(
        default="dapo",
        metadata={"help": "Token-level clipped surrogate: 'dapo' (paper Eq. 8), 'bnpo', 'grpo' or 'dr_grpo'."},
    )
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip ε_low (official 32B script: 0.2)."})
    epsilon_high: float = field(
        default=0.28, metadata={"help": "Upper clip ε_high, DAPO clip-higher (official 32B script: 0.28)."}
    )
    delta: float = field(
        default=10.0,
        metadata={"help": "Dual-clip constant c, also the Future-KL participation filter (official 32B: 10.0)."},
    )
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (official 32B script: no KL term)."})
    disable_dropout: bool = field(
        default=True, metadata={"help": "Disable dropout so that on-policy log-ratios are exactly 0."}
    )
    fipo_decay_rate: float = field(
        default=32.0, metadata={"help": "Half-life τ (tokens) of the Future-KL discount γ = 2^(-1/τ) (32B: 32)."}
    )
    fipo_clip_range: float = field(
        default=0.2, metadata={"help": "Influence-weight clip ε_f; 0 = official unclipped mode (cap 10) (32B: 0.2)."}
    )
    fipo_clip_high_only: bool = field(
        default=True, metadata={"help": "Weights in [1, 1+ε_f] if True (32B), [1-ε_f, 1+ε_f] if False (7B)."}
    )
    fipo_safety_threshold: float = field(
        default=10.0, metadata={"help": "Ratio above which A<0 tokens get their weight capped to [0.8, 1] (32B: 10)."}
    )

    def __post_init__(self):
        if self.steps_per_generation is None and self.generation_batch_size is None:
            self.steps_per_generation = default_steps_per_generation(self.gradient_accumulation_steps)
        super().__post_init__()

        if self.loss_type not in FIPO_LOSS_TYPES:
            raise ValueError(
                f"loss_type={self.loss_type!r} is not supported by FIPO, which re-weights the advantage of a "
                f"token-level clipped surrogate. Use one of {FIPO_LOSS_TYPES} ('dapo' is the paper's)."
            )
        if self.importance_sampling_level != "token":
            raise ValueError(
                "importance_sampling_level='sequence' (GSPO) is not supported by FIPO: its weights are per token. "
                "Set importance_sampling_level='token'."
            )
        if self.delta is None or self.delta <= 1 + (self.epsilon_high or self.epsilon):
            raise ValueError(
                f"delta={self.delta} must be a number greater than 1 + epsilon_high: it is FIPO's dual-clip constant "
                "c (official 32B: 10.0)."
            )
        if self.fipo_decay_rate <= 0:
            raise ValueError(f"fipo_decay_rate must be > 0 (tokens), got {self.fipo_decay_rate}; official: 32.0.")
        if self.fipo_clip_range < 0 or (not self.fipo_clip_high_only and self.fipo_clip_range >= 1):
            raise ValueError(
                f"fipo_clip_range={self.fipo_clip_range} must be >= 0, and < 1 when fipo_clip_high_only=False (the "
                "lower bound 1 - fipo_clip_range must stay positive); official: 0.2."
            )
        if self.fipo_safety_threshold <= 0:
            raise ValueError(f"fipo_safety_threshold must be > 0, got {self.fipo_safety_threshold}; official: 10.0.")
        # transformers unpins only for use_cpu; pinning without an accelerator does nothing but make torch warn
        if self.dataloader_pin_memory and not torch.accelerator.is_available():
            self.dataloader_pin_memory = False

        if is_on_policy(self.gradient_accumulation_steps, self.steps_per_generation, self.num_iterations):
            warnings.warn(
                f"Every update is on-policy (gradient_accumulation_steps={self.gradient_accumulation_steps}, "
                f"steps_per_generation={self.steps_per_generation}, num_iterations={self.num_iterations}): log π_θ = "
                "log π_old, all FIPO weights are 1 and FIPO is exactly DAPO. Set steps_per_generation to a multiple "
                "of gradient_accumulation_steps (official: 8 ×) to reuse each generation batch for several "
                "optimizer steps.",
                stacklevel=3,
            )
        elif self.num_iterations > 1:
            warnings.warn(
                f"num_iterations={self.num_iterations} revisits the same completions, so FIPO's log-ratios also carry "
                "the effect of training on that very completion. The official recipe uses num_iterations=1 and "
                "disjoint mini-batches (steps_per_generation = 8 × gradient_accumulation_steps).",
                stacklevel=3,
            )
