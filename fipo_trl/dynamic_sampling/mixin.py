"""
DAPO's dynamic sampling as a trainer mixin: filter rounds until a generation batch holds only groups with a reward
spread (the group filter itself is pure torch in [`fipo_trl.dynamic_sampling.group_filter`]). Resume state comes
from [`fipo_trl.run.resume.ExactResumeMixin`].
"""

import warnings

import torch
from accelerate.utils import gather_object
from datasets import IterableDataset

from ..run.resume import ExactResumeMixin
from .group_filter import (
    METRICS,
    PromptStream,
    check_round_geometry,
    filter_groups,
    metric_values,
    row_sources,
    select_groups,
)


class DynamicSamplingMixin(ExactResumeMixin):
    """
    DAPO's dynamic sampling (`fipo_trl.dynamic_sampling.group_filter`) for `GRPOTrainer` and its subclasses, with the
    exact resume of [`ExactResumeMixin`].

    With `args.dynamic_sampling=True` (a [`FIPOConfig`]), `_generate_and_score_completions` first runs the filter
    rounds (`_dynamic_sampling`), then calls the parent once on the kept rows, with `_generate` and
    `_calculate_rewards` replaying what the rounds produced, so TRL itself derives everything else (old log-probs,
    advantages, `num_items_in_batch`, vLLM IS ratios, metrics) from the kept batch. For the DAPO baseline:
    `class DAPOTrainer(DynamicSamplingMixin, GRPOTrainer)` with a `FIPOConfig`.
    """

    _replay = None  # class-level, so the overrides stay transparent on a trainer whose `__init__` did not run

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._replay = None  # one-shot generation + rewards of the kept rows, consumed by the parent's next call
        self.prompt_stream = None
        if getattr(self.args, "dynamic_sampling", False) and self.train_dataset is not None:
            self._check_dynamic_sampling_support()
            self.prompt_stream = PromptStream(len(self.train_dataset), self.args.seed)

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
        metric = self.args.dynamic_sampling_metric
        if metric not in METRICS and metric not in self.reward_func_names:
            raise ValueError(
                f"dynamic_sampling_metric={metric!r} is not {METRICS[0]!r}, {METRICS[1]!r} or a reward function of "
                f"this trainer ({', '.join(self.reward_func_names)})."
            )
        kept = self.args.generation_batch_size // self.num_generations
        per_round = self.args.dynamic_sampling_prompts_per_round or kept
        check_round_geometry(per_round, kept, self.num_generations, self.accelerator.num_processes)

    # --------------------------------------------------------------------------------------------- dynamic sampling
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

    def _dynamic_sampling(self, inputs):
        """
        Run filter rounds until the batch holds `generation_batch_size / G` signal groups (docs/fipo.md §3.2).

        Every process sees the same gathered rewards, so all agree on the kept groups and on the number of rounds
        without any extra collective. Each round's rows are split over processes in contiguous slices, as TRL splits
        a generation batch; the kept rows are then exchanged so that process `p` holds rows `[p·B, (p+1)·B)` of the
        kept batch, `B` = the local generation batch.

        Returns the kept local rows (dataset rows) and the replay for `_generate` / `_calculate_rewards`.
        """
        args, group = self.args, self.num_generations
        rank, num_processes = self.accelerator.process_index, self.accelerator.num_processes
        kept_groups = args.generation_batch_size // group
        per_round = args.dynamic_sampling_prompts_per_round or kept_groups
        rows_per_process, local_rows = per_round * group // num_processes, len(inputs)
        columns = list(inputs[0])

        def stream_rows(count):  # dataset rows from the stream, each repeated G times as TRL's sampler does
            rows = [self.train_dataset[i] for i in self.prompt_stream.take(count)]
            return [{key: row[key] for key in columns} for row in rows for _ in range(group)]

        rounds, keeps, rewards, verdicts = [], [], [], []
        while True:
            if not rounds:
                # Round 1: the dataloader's generation batch (gathered, it is the same list everywhere), topped up
                top_up = per_round - kept_groups
                global_rows = gather_object(inputs) + stream_rows(top_up) if top_up else None
            else:
                global_rows = stream_rows(per_round)
            if global_rows is None:
                rows = inputs  # TRL already split this generation batch over the processes
            else:
                rows = global_rows[rank * rows_per_process : (rank + 1) * rows_per_process]
            generated, round_rewards = self._generate_round(rows)
            rounds.append(generated)
            rewards.append(round_rewards)
            values = metric_values(
                rewards[-1], args.dynamic_sampling_metric, self.reward_func_names, self.reward_weights
            )
            verdicts.append(filter_groups(values, rewards[-1][:, 0] > 0, group))
            keeps.append(verdicts[-1].keep)
            found = int(sum(keep.sum() for keep in keeps))
            limit_hit = 0 < args.max_num_gen_batches <= len(rounds)
            if found >= kept_groups or limit_hit:
                break

        if found < kept_groups and args.dynamic_sampling_on_limit == "raise":
            raise ValueError(
                f"dynamic sampling kept {found} of the {kept_groups} groups a generation batch needs after "
                f"max_num_gen_batches={args.max_num_gen_batches} rounds of {per_round} prompts: almost every group "
                "got the same metric for all its completions (data too easy or too hard for the model). Raise "
                "max_num_gen_batches (<= 0: no limit), or set dynamic_sampling_on_limit='fill' to train on what "
                "there is."
            )
        selected = select_groups(keeps, kept_groups, fill=True)
        filled = max(kept_groups - found, 0)
        if filled:
            warnings.warn(
                f"dynamic sampling reached max_num_gen_batches={args.max_num_gen_batches} with {found} of "
                f"{kept_groups} groups kept: {filled} dropped groups (advantage 0) fill the batch.",
                stacklevel=2,
            )
        self._log_dynamic_sampling(verdicts, per_round, filled)

        # Hand the kept rows to their processes: row j of the kept batch goes to process j // local_rows
        sources = row_sources(selected, group, rows_per_process)
        mine = {j: rounds[r][row] for j, (r, source, row) in enumerate(sources) if source == rank}
        received = {}
        for part in gather_object([mine]):
            received.update(part)
        payload = [received[j] for j in range(rank * local_rows, (rank + 1) * local_rows)]
        kept_rewards = torch.stack([rewards[r][g * group + i] for r, g in selected for i in range(group)])

        def column(key):
            return [row[key] for row in payload] if payload[0][key] is not None else None

        generation = (
            column("prompt_ids"),
            column("completion_ids"),
            None,  # tool_mask: tools are refused with dynamic sampling
            column("completions"),
            column("logprobs"),
            {},  # extra_fields: rollout_func is refused
            None,  # images
            [],  # tool_images
        )
        names = sorted({name for row in payload for name in row["extra"]})
        extra_logs = {name: [row["extra"].get(name) for row in payload] for name in names}
        replay = {"generation": generation, "rewards": kept_rewards, "extra_logs": extra_logs}
        return column("input"), replay

    def _generate_round(self, rows):
        """Generate and score one round on this process's `rows`: one dict per row, and the gathered rewards."""
        prompts = [row["prompt"] for row in rows]
        prompt_ids, completion_ids, _, completions, logprobs, _, _, _ = self._generate(prompts)
        rewards = self._calculate_rewards(rows, prompts, completions, completion_ids)
        # Columns a reward function logged with `log_extra` travel with their row (one value per completion)
        extra = {name: values for name, values in self._pending_extra_logs.items() if len(values) == len(rows)}
        self._pending_extra_logs.clear()
        logprobs = logprobs if logprobs is not None else [None] * len(rows)
        generated = [
            {
                "input": rows[i],
                "prompt_ids": prompt_ids[i],
                "completion_ids": completion_ids[i],
                "completions": completions[i],
                "logprobs": logprobs[i],
                "extra": {name: values[i] for name, values in extra.items()},
            }
            for i in range(len(rows))
        ]
        return generated, rewards

    def _log_dynamic_sampling(self, verdicts, per_round, filled):
        # Computed from gathered rewards, hence the same on every process: no reduction needed
        generated = sum(len(verdict.keep) for verdict in verdicts)
        metrics = self._metrics["train"]
        metrics["num_gen_batches"].append(len(verdicts))  # official name (verl train/num_gen_batches, paper Fig. 4b)
        metrics["dynamic_sampling/prompts_generated"].append(len(verdicts) * per_round)
        for name, groups in [
            ("filtered_frac", [~verdict.keep for verdict in verdicts]),
            ("all_correct_frac", [verdict.all_correct for verdict in verdicts]),
            ("all_wrong_frac", [verdict.all_wrong for verdict in verdicts]),
        ]:
            metrics[f"dynamic_sampling/{name}"].append(sum(int(g.sum()) for g in groups) / generated)
        metrics["dynamic_sampling/filled_groups"].append(filled)
