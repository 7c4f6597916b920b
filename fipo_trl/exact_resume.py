"""
Exact resume, an opt-in trainer mixin: the generation state kept with each checkpoint, so that a resumed run trains
exactly as an uninterrupted one: TRL's buffered generation batch and micro-step counter, the dynamic-sampling prompt
stream when the trainer has one, and a sampler whose order depends on the epoch only (docs/trl.md lists the TRL
internals this relies on).
"""

import os
import warnings

import torch
from trl.trainer.utils import RepeatSampler


GENERATION_STATE_FILE = "fipo_generation_state_{}.pt"  # one per process, next to Trainer's rng_state files


class EpochSeededRepeatSampler(RepeatSampler):
    """
    TRL's `RepeatSampler`, whose order in epoch `e` is always the `(e+1)`-th permutation drawn from its seeded
    generator, the order an uninterrupted run sees. TRL's sampler starts a fresh generator with every dataloader, so
    a run resumed in epoch `e ≥ 1` would replay epoch 0's order. The Trainer calls `set_epoch` before each epoch;
    without it (or without a seed) the sampler behaves exactly as TRL's.
    """

    epoch = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle and self.seed is not None and self.epoch is not None:
            self.generator.manual_seed(self.seed)
            for _ in range(self.epoch):  # the permutations of the epochs before this one
                torch.randperm(self.num_samples, generator=self.generator)
        return super().__iter__()


class ExactResumeMixin:
    """
    Exact resume for `GRPOTrainer` and its subclasses: `class MyTrainer(ExactResumeMixin, GRPOTrainer)`.

    TRL hooks it overrides: `_save_rng_state` / `_load_rng_state` keep the buffered generation batch, TRL's
    micro-step counter (`_buffered_inputs`, `_step`) and, when the trainer has one, the dynamic-sampling prompt
    stream in `fipo_generation_state_<rank>.pt` with each checkpoint; `_get_train_sampler` makes the sampler's order
    depend on the epoch only; `_issue_warnings_after_load` does not report a tied weight that the checkpoint leaves
    out as missing. That last one stays a hook rather than a logging filter: transformers builds the warning from the
    key list it is given, and only the loaded model can tell a tied copy from a key that is really missing.
    Independent of dynamic sampling: with [`~fipo_trl.DynamicSamplingMixin`] in the trainer too, its prompt stream
    is saved and restored as well.
    """

    prompt_stream = None  # a `PromptStream` on a trainer with dynamic sampling on (`DynamicSamplingMixin` sets it)

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is not RepeatSampler:
            return sampler
        return EpochSeededRepeatSampler(
            data_source=dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size,
            repeat_count=sampler.repeat_count,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
        )

    def _generation_geometry(self):
        args = self.args
        sizes = [
            args.steps_per_generation,
            args.num_iterations,
            args.per_device_train_batch_size,
            self.num_generations,
        ]
        return [*sizes, self.accelerator.num_processes]

    def _save_rng_state(self, output_dir):
        # Called on every process for every full checkpoint, before trainer_state.json marks it complete. The
        # buffered generation batch and TRL's micro-step counter make a resumed run reuse that batch for the
        # remaining steps and regenerate at the same steps as an uninterrupted run; the stream continues the rounds
        super()._save_rng_state(output_dir)
        buffered = self._buffered_inputs
        state = {
            "step": self._step,
            "geometry": self._generation_geometry(),
            "buffered_inputs": None if buffered is None else [_to_device(batch, "cpu") for batch in buffered],
            "prompt_stream": None if self.prompt_stream is None else self.prompt_stream.state_dict(),
        }
        torch.save(state, os.path.join(output_dir, GENERATION_STATE_FILE.format(self.accelerator.process_index)))

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, GENERATION_STATE_FILE.format(self.accelerator.process_index))
        if not os.path.isfile(path):
            warnings.warn(
                f"{path} is missing (a checkpoint from an older fipo_trl or another world size?): the generation "
                "batch is regenerated at the first resumed step, so later generations fall at other steps than in "
                "an uninterrupted run" + (", and the prompt stream restarts." if self.prompt_stream else "."),
                stacklevel=2,
            )
            return
        state = torch.load(path, weights_only=True)
        if self.prompt_stream is not None:
            if state["prompt_stream"] is None:
                warnings.warn(
                    f"{path} holds no prompt stream (saved without dynamic sampling): it restarts.", stacklevel=2
                )
            else:
                self.prompt_stream.load_state_dict(state["prompt_stream"])
        if state["buffered_inputs"] is not None and state["geometry"] == self._generation_geometry():
            self._step = state["step"]
            self._buffered_inputs = [_to_device(batch, self.accelerator.device) for batch in state["buffered_inputs"]]
        elif state["buffered_inputs"] is not None:
            warnings.warn(
                f"the batch geometry changed since {checkpoint} was saved ([steps_per_generation, num_iterations, "
                f"per_device_train_batch_size, num_generations, processes] {state['geometry']} -> "
                f"{self._generation_geometry()}): its buffered generation batch is dropped and regenerated at the "
                "first resumed step.",
                stacklevel=2,
            )

    def _issue_warnings_after_load(self, load_result):
        # A tied model's checkpoint leaves out the tied copy (`lm_head.weight`), which loading its source restored;
        # transformers would still warn "missing keys" on every resume. A key whose tensor is not its source's stays.
        params = dict(self.model.named_parameters(remove_duplicate=False))
        tied = getattr(self.model, "all_tied_weights_keys", None) or {}
        missing = [
            key
            for key in load_result.missing_keys
            if not (key in tied and key in params and params[key] is params.get(tied[key]))
        ]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))


def _to_device(batch, device):
    """A buffered micro-batch (tensors, lists, 0-dim tensors) with every tensor moved to `device`."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
