"""
DAPO's dynamic sampling as a trainer mixin: filter rounds until a generation batch holds only groups with a reward
spread. The group filter itself is pure torch in [`fipo_trl.dynamic_sampling.group_filter`], the fields in
[`fipo_trl.dynamic_sampling.config`].
"""

import warnings
from typing import Any, NamedTuple

import torch
from accelerate.utils import gather_object
from datasets import IterableDataset

from .config import DynamicSamplingConfig
from .group_filter import (
    ROUND_LENGTH_METRICS,
    GroupFilter,
    PromptStream,
    RoundLimitError,
    RoundSizes,
    check_dynamic_sampling_metric,
    filter_groups,
    merge_round_metrics,
    metric_values,
    round_sizes,
    row_sources,
    select_groups,
)


class GenerateOutput(NamedTuple):
    """
    What TRL 1.16's `GRPOTrainer._generate(prompts)` returns, in its order (`docs/trl.md` §6, item 11). Each round
    reads TRL's output through it, and the kept rows go back to TRL as one, so the tuple is built in one place.
    """

    prompt_ids: list
    completion_ids: list
    tool_mask: list | None
    completions: list
    logprobs: list | None
    extra_fields: dict  # filled by a `rollout_func` only, which dynamic sampling refuses
    images: list | None
    tool_images: list  # filled by tools only, which dynamic sampling refuses

    @classmethod
    def of(cls, output: tuple) -> "GenerateOutput":
        """`output` of `GRPOTrainer._generate`, refused if TRL's return has changed shape."""
        if len(output) != len(cls._fields):
            raise RuntimeError(
                f"GRPOTrainer._generate returned {len(output)} values, fipo_trl replays the {len(cls._fields)} of "
                "TRL 1.16 (GenerateOutput): this TRL version is not supported (pinned to trl>=1.16,<1.17)."
            )
        return cls(*output)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per completion with the per-completion fields (`None` where TRL returned `None`)."""
        if self.extra_fields or self.tool_images:
            raise RuntimeError("dynamic sampling cannot replay rollout_func extra fields or tool images")
        fields = [name for name in self._fields if name not in ("extra_fields", "tool_images")]
        return [
            {name: None if getattr(self, name) is None else getattr(self, name)[i] for name in fields}
            for i in range(len(self.completion_ids))
        ]

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> "GenerateOutput":
        """The output TRL's `_generate` would have returned for exactly these completions (the inverse of `rows`)."""
        fields = [name for name in cls._fields if name not in ("extra_fields", "tool_images")]
        columns = {name: [row[name] for row in rows] for name in fields}
        columns = {name: None if all(v is None for v in values) else values for name, values in columns.items()}
        return cls(**columns, extra_fields={}, tool_images=[])


class Round(NamedTuple):
    """One filter round: this process's rows, the gathered rewards of all rows, and the per-group verdicts."""

    rows: list[dict[str, Any]]  # dataset row (`input`), `GenerateOutput.rows()` fields, reward-logged `extra`
    rewards: torch.Tensor  # (rows over all processes, reward functions), as TRL's `_calculate_rewards` returns
    verdict: GroupFilter


class DynamicSamplingMixin:
    """
    DAPO's dynamic sampling (docs/dynamic-sampling.md) for `GRPOTrainer` and its subclasses:
    `class MyTrainer(DynamicSamplingMixin, GRPOTrainer)`, given a config with [`DynamicSamplingConfig`]'s fields.

    TRL hooks it overrides: `_generate_and_score_completions`, `_generate` and `_calculate_rewards` (and it reads
    `_metrics` and `_pending_extra_logs`). With `args.dynamic_sampling=True`, `_generate_and_score_completions`
    first runs the filter rounds (`_dynamic_sampling`), then calls the parent once on the kept rows, with `_generate`
    and `_calculate_rewards` replaying what the rounds produced, so TRL itself derives everything else (old
    log-probs, advantages, `num_items_in_batch`, vLLM IS ratios, metrics) from the kept batch. With it off, each
    override is the parent's call. [`~fipo_trl.DAPOTrainer`] is this mixin on `GRPOTrainer`; the prompt stream is
    kept across a resume only with [`~fipo_trl.ExactResumeMixin`] in the trainer as well.
    """

    # Class-level, so that the overrides defer to TRL on a trainer whose `__init__` did not run (TRL's own tests build
    # trainers with `object.__new__`)
    _replay = None
    prompt_stream = None

    def __init__(self, model, reward_funcs=None, args=None, **kwargs):
        if not isinstance(args, DynamicSamplingConfig):
            raise TypeError(
                f"{type(self).__name__} needs a config with DynamicSamplingConfig's fields, got "
                f"{type(args).__name__}: pass a DAPOConfig, or a dataclass of DynamicSamplingConfig and your config."
            )
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self._replay = None  # one-shot generation + rewards of the kept rows, consumed by the parent's next call
        self.prompt_stream = None
        if self.args.dynamic_sampling and self.train_dataset is not None:
            self._check_dynamic_sampling_support()
            # in dataset order (shuffle_dataset=False) it continues after the dataloader's first generation batch
            start = 0 if self.shuffle_dataset else self._round_sizes().kept_groups
            self.prompt_stream = PromptStream(len(self.train_dataset), self.args.seed, self.shuffle_dataset, start)

    def _check_dynamic_sampling_support(self):
        unsupported = {
            "an IterableDataset (the extra rounds index the dataset)": isinstance(self.train_dataset, IterableDataset),
            "tools": bool(self.tools),
            "environment_factory": self.environment_factories is not None,
            "rollout_func": self.rollout_func is not None,
            # a torch Dataset has no column names; its rows are checked by TRL as usual
            "image datasets": bool({"image", "images"} & set(getattr(self.train_dataset, "column_names", None) or [])),
        }
        for what, present in unsupported.items():
            if present:
                raise ValueError(f"dynamic_sampling=True does not support {what} yet: set dynamic_sampling=False.")
        check_dynamic_sampling_metric(self.args, self.reward_func_names)
        self._round_sizes()

    def _round_sizes(self) -> RoundSizes:
        return round_sizes(
            self.args.generation_batch_size,
            self.num_generations,
            self.args.dynamic_sampling_prompts_per_round,
            self.accelerator.num_processes,
        )

    # --------------------------------------------------------------------------------------------- TRL's methods
    def _generate_and_score_completions(self, inputs):
        if self.prompt_stream is None or not self.model.training:
            return super()._generate_and_score_completions(inputs)
        kept_inputs, self._replay = self._dynamic_sampling(inputs)
        try:
            return super()._generate_and_score_completions(kept_inputs)
        finally:
            self._replay = None

    def _generate(self, prompts):
        if self._replay is None:
            return super()._generate(prompts)
        return self._replay["generation"]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self._replay is None:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._pending_extra_logs.update(self._replay["extra_logs"])
        return self._replay["rewards"]

    # --------------------------------------------------------------------------------------------- dynamic sampling
    def _dynamic_sampling(self, inputs):
        """
        Run filter rounds until the batch holds `generation_batch_size / G` signal groups (docs/fipo.md §3.2-§3.3).

        Returns the kept local rows (dataset rows) and the replay for `_generate` / `_calculate_rewards`.
        """
        sizes, group = self._round_sizes(), self.num_generations
        metrics = self._metrics["train"]
        logged_before = {name: len(metrics.get(name, ())) for name in ROUND_LENGTH_METRICS}
        rounds = self._filter_rounds(inputs, sizes)
        found = sum(int(round_.verdict.keep.sum()) for round_ in rounds)
        filled = self._apply_round_limit(found, sizes)
        self._log_dynamic_sampling(rounds, sizes, filled, logged_before)

        selected = select_groups([round_.verdict.keep for round_ in rounds], sizes.kept_groups, fill=True)
        payload = self._exchange_kept_rows(rounds, selected, sizes, len(inputs))
        kept_rewards = torch.stack([rounds[r].rewards[g * group + i] for r, g in selected for i in range(group)])
        names = sorted({name for row in payload for name in row["extra"]})
        replay = {
            "generation": GenerateOutput.from_rows(payload),
            "rewards": kept_rewards,
            "extra_logs": {name: [row["extra"].get(name) for row in payload] for name in names},
        }
        return [row["input"] for row in payload], replay

    def _filter_rounds(self, inputs, sizes):
        """
        Generate and filter rounds until `sizes.kept_groups` groups have signal or `max_num_gen_batches` rounds ran.

        Every process sees the same gathered rewards, so all agree on the verdicts and on the number of rounds
        without any extra collective.
        """
        rounds = []
        while True:
            rounds.append(self._generate_round(self._round_rows(inputs, sizes, first=not rounds)))
            found = sum(int(round_.verdict.keep.sum()) for round_ in rounds)
            if found >= sizes.kept_groups or 0 < self.args.max_num_gen_batches <= len(rounds):
                return rounds

    def _round_rows(self, inputs, sizes, first):
        """
        This process's dataset rows for a round, each prompt repeated G times as TRL's sampler does. Round 1 is the
        dataloader's generation batch, topped up from the prompt stream; later rounds come from the stream. A round's
        rows are split over processes in contiguous slices, as TRL splits a generation batch.
        """
        group, rank = self.num_generations, self.accelerator.process_index
        count = sizes.prompts_per_round - sizes.kept_groups if first else sizes.prompts_per_round
        if count == 0:
            return inputs  # round 1 without top-up: TRL already split this generation batch over the processes
        columns = list(inputs[0])
        drawn = [self.train_dataset[i] for i in self.prompt_stream.take(count)]
        streamed = [{key: row[key] for key in columns} for row in drawn for _ in range(group)]
        global_rows = (gather_object(inputs) if first else []) + streamed  # gathered: the same list everywhere
        rows_per_process = sizes.prompts_per_round * group // self.accelerator.num_processes
        return global_rows[rank * rows_per_process : (rank + 1) * rows_per_process]

    def _generate_round(self, rows):
        """Generate and score one round on this process's `rows` with TRL's `_generate` and `_calculate_rewards`."""
        prompts = [row["prompt"] for row in rows]
        output = GenerateOutput.of(self._generate(prompts))
        rewards = self._calculate_rewards(rows, prompts, output.completions, output.completion_ids)
        # Columns a reward function logged with `log_extra` travel with their row (one value per completion)
        extra = {name: values for name, values in self._pending_extra_logs.items() if len(values) == len(rows)}
        self._pending_extra_logs.clear()
        generated = [
            {"input": row, **fields, "extra": {name: values[i] for name, values in extra.items()}}
            for i, (row, fields) in enumerate(zip(rows, output.rows(), strict=True))
        ]
        values = metric_values(rewards, self.args.dynamic_sampling_metric, self.reward_func_names, self.reward_weights)
        return Round(generated, rewards, filter_groups(values, rewards[:, 0] > 0, self.num_generations))

    def _apply_round_limit(self, found, sizes):
        """
        The limit policy when the rounds kept fewer than `sizes.kept_groups` groups: raise [`RoundLimitError`]
        (official), or warn and return how many dropped groups fill the batch (`dynamic_sampling_on_limit="fill"`).
        """
        missing = sizes.kept_groups - found
        if missing <= 0:
            return 0
        args = self.args
        if args.dynamic_sampling_on_limit == "raise":
            raise RoundLimitError(
                f"dynamic sampling kept {found} of the {sizes.kept_groups} groups a generation batch needs after "
                f"max_num_gen_batches={args.max_num_gen_batches} rounds of {sizes.prompts_per_round} prompts: almost "
                "every group got the same metric for all its completions (data too easy or too hard for the model). "
                "Raise max_num_gen_batches (<= 0: no limit), or set dynamic_sampling_on_limit='fill' to train on "
                "what there is."
            )
        warnings.warn(
            f"dynamic sampling reached max_num_gen_batches={args.max_num_gen_batches} with {found} of "
            f"{sizes.kept_groups} groups kept: {missing} dropped groups (advantage 0) fill the batch.",
            stacklevel=3,
        )
        return missing

    def _exchange_kept_rows(self, rounds, selected, sizes, local_rows):
        """
        Hand the kept rows to their processes: row `j` of the kept batch goes to process `j // local_rows`, so that
        process `p` holds rows `[p·B, (p+1)·B)`, `B` = the local generation batch, as TRL would have split it.
        """
        rank = self.accelerator.process_index
        rows_per_process = sizes.prompts_per_round * self.num_generations // self.accelerator.num_processes
        sources = row_sources(selected, self.num_generations, rows_per_process)
        mine = {j: rounds[r].rows[row] for j, (r, source, row) in enumerate(sources) if source == rank}
        received = {}
        for part in gather_object([mine]):
            received.update(part)
        return [received[j] for j in range(rank * local_rows, (rank + 1) * local_rows)]

    def _log_dynamic_sampling(self, rounds, sizes, filled, logged_before):
        # Computed from gathered rewards and gathered lengths, hence the same on every process: no reduction needed
        metrics = self._metrics["train"]
        verdicts = [round_.verdict for round_ in rounds]
        generated = sum(len(verdict.keep) for verdict in verdicts)
        metrics["num_gen_batches"].append(len(rounds))  # official name (verl train/num_gen_batches, paper Fig. 4b)
        metrics["dynamic_sampling/prompts_generated"].append(len(rounds) * sizes.prompts_per_round)
        for name, groups in [
            ("filtered_frac", [~verdict.keep for verdict in verdicts]),
            ("all_correct_frac", [verdict.all_correct for verdict in verdicts]),
            ("all_wrong_frac", [verdict.all_wrong for verdict in verdicts]),
        ]:
            metrics[f"dynamic_sampling/{name}"].append(sum(int(g.sum()) for g in groups) / generated)
        metrics["dynamic_sampling/filled_groups"].append(filled)
        # TRL's `_generate` logged its completion lengths once per round: one value per generation batch instead
        per_round = {name: metrics.get(name, [])[logged_before[name] :] for name in ROUND_LENGTH_METRICS}
        if len(rounds) > 1 and all(len(values) == len(rounds) for values in per_round.values()):
            completions = sizes.prompts_per_round * self.num_generations
            for name, value in merge_round_metrics(per_round, completions).items():
                del metrics[name][logged_before[name] :]
                metrics[name].append(value)
