"""
The batch geometry a recipe implies for N processes, without loading a model, with TRL 1.16's rules
(`GRPOConfig.__post_init__`): prompts and completions per generation batch, optimizer steps per generation batch,
and whether any update is off-policy. `fipo-trl check` prints it (`fipo_trl.cli.check`).
"""

import math
from dataclasses import dataclass

from .config import default_steps_per_generation, is_on_policy
from .errors import UsageError


GEOMETRY_FIELDS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "generation_batch_size",
    "num_generations",
    "num_iterations",
)


@dataclass
class Geometry:
    """Batch geometry of one run, in TRL's units (completions) unless the name says prompts."""

    num_processes: int
    num_nodes: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    num_generations: int
    num_iterations: int

    @property
    def completions_per_generation(self):
        return self.per_device_train_batch_size * self.num_processes * self.steps_per_generation

    @property
    def prompts_per_generation(self):
        return self.completions_per_generation // self.num_generations

    @property
    def completions_per_step(self):
        return self.per_device_train_batch_size * self.num_processes * self.gradient_accumulation_steps

    @property
    def steps_per_generation_batch(self):
        # Optimizer steps fed by one generation batch over all its passes (a fraction if one batch is < one step)
        return self.steps_per_generation * self.num_iterations / self.gradient_accumulation_steps

    @property
    def off_policy_steps(self):
        """`(stale, total)` optimizer steps over one period of the schedule: steps that see data generated before an
        earlier optimizer step (FIPO weights can differ from 1 there) and all steps."""
        accumulation, block = self.gradient_accumulation_steps, self.steps_per_generation * self.num_iterations
        period = math.lcm(block, accumulation)
        stale = {s // accumulation for s in range(period) if s // accumulation > (s - s % block) // accumulation}
        return len(stale), period // accumulation

    @property
    def off_policy(self):
        # TRL's own test for computing old log-probs (docs/trl.md §3): otherwise log π_θ = log π_old and FIPO = DAPO
        return not is_on_policy(self.gradient_accumulation_steps, self.steps_per_generation, self.num_iterations)


def resolve_geometry(raw, num_processes, num_nodes=1):
    """
    Resolve the batch geometry of `raw` recipe fields for `num_processes` training processes (TRL 1.16 rules).

    Args:
        raw (`dict`): the recipe's geometry fields (see `GEOMETRY_FIELDS`), missing ones filled with FIPOConfig's
            defaults; `steps_per_generation` and `generation_batch_size` may be `None`.
        num_processes (`int`): training processes in total, over all nodes.
        num_nodes (`int`): machines; `num_processes` must split evenly over them.

    Raises:
        UsageError: when TRL would refuse the configuration at this world size.
    """
    if num_processes < 1 or num_nodes < 1 or num_processes % num_nodes:
        raise UsageError(f"--num_processes {num_processes} does not split evenly over --num_machines {num_nodes}")
    per_device, accumulation = raw["per_device_train_batch_size"], raw["gradient_accumulation_steps"]
    steps, generation_batch = raw["steps_per_generation"], raw["generation_batch_size"]
    num_generations, num_iterations = raw["num_generations"], raw["num_iterations"]
    if min(per_device, accumulation, num_iterations) < 1:
        raise UsageError("per_device_train_batch_size, gradient_accumulation_steps and num_iterations must be >= 1")
    if num_generations < 2:
        raise UsageError(f"num_generations={num_generations}: GRPO/FIPO needs at least 2 completions per prompt")
    global_batch = per_device * num_processes
    if steps is not None and generation_batch is not None:
        raise UsageError("steps_per_generation and generation_batch_size are both set: TRL accepts only one of them")
    if generation_batch is not None:
        if generation_batch % global_batch:
            raise UsageError(
                f"generation_batch_size={generation_batch} is not divisible by per_device_train_batch_size × "
                f"processes = {per_device} × {num_processes} = {global_batch}"
            )
        steps = generation_batch // global_batch
    elif steps is None:
        steps = default_steps_per_generation(accumulation)
    geometry = Geometry(num_processes, num_nodes, per_device, accumulation, steps, num_generations, num_iterations)
    if geometry.completions_per_generation % num_generations:
        raise UsageError(
            f"a generation batch of {geometry.completions_per_generation} completions ({per_device} per device × "
            f"{num_processes} processes × {steps} steps_per_generation) is not divisible by num_generations="
            f"{num_generations}: TRL needs whole prompt groups"
        )
    return geometry
