import textwrap

import torch
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

from .config import FIPOConfig
from .core import LOG_RATIO_CLAMP, fipo_weights, weight_bounds
from .diagnostics import fipo_diagnostics


class FIPOTrainer(GRPOTrainer):
    """
    Trainer for Future-KL Influenced Policy Optimization (FIPO).

    FIPO (https://huggingface.co/papers/2603.19835) re-weights each token's advantage by `f = clip(exp(FutureKL))`,
    the discounted sum of how much the policy has moved on the rest of the response since it was sampled, then trains
    the dual-clipped DAPO surrogate on `A·f`. The only method overridden is `_compute_loss` (plus
    `_get_per_token_logps_and_entropies`, to hand the parent the forward pass already made): FIPO computes `f` from
    the single policy forward, then calls the parent loss with `A·f` as per-token advantages and the dropped responses
    removed through `tool_mask`.

    Everything else is `GRPOTrainer`'s. The extras are opt-in and compose with `GRPOTrainer` as well: DAPO's dynamic
    sampling ([`DynamicSamplingMixin`] with [`DynamicSamplingConfig`]'s fields), exact resume ([`ExactResumeMixin`])
    and the reward-spread stop ([`RewardSpreadCallback`]); docs/fipo_trainer.md shows each.
    """

    _tag_names = ["trl", "fipo"]
    _name = "FIPO"
    _paper = {
        "title": "FIPO: Eliciting Deep Reasoning with Future-KL Influenced Policy Optimization",
        "id": "2603.19835",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{ma2026fipo,
                title        = {{FIPO: Eliciting Deep Reasoning with Future-KL Influenced Policy Optimization}},
                author       = {Chiyu Ma and Shuo Yang and Kexin Huang and Jinda Lu and Haoming Meng and
                                Shangshang Wang and Bolin Ding and Soroush Vosoughi and Guoyin Wang and Jingren Zhou},
                year         = 2026,
                eprint       = {arXiv:2603.19835},
            }"""),
    }

    _forward_cache = None  # class-level, so `_get_per_token_logps_and_entropies` defers to TRL without `__init__`

    def __init__(self, model, reward_funcs=None, args=None, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = FIPOConfig(f"{model_name.split('/')[-1]}-FIPO")
        if not isinstance(args, FIPOConfig):
            raise TypeError(f"FIPOTrainer needs a FIPOConfig, got {type(args).__name__}: fipo_* fields live there.")
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self._forward_cache = None
        self.fipo_token_view = None  # latest off-policy completion: prompt and completion ids, weights, log-ratios

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        # The parent loss asks for the forward that `_compute_loss` below has already made: hand it over once
        if self._forward_cache is not None:
            cached, self._forward_cache = self._forward_cache, None
            return cached
        return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

    def _compute_loss(self, model, inputs):
        completion_mask = inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        per_token_logps, entropies, aux_loss = self._policy_forward(model, inputs)
        # Δ comes from the trainer's recomputed log π_old, never from vLLM's sampling log-probs (docs/fipo.md §6.2)
        old_per_token_logps = inputs.get("old_per_token_logps")
        old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
        log_ratio = per_token_logps.detach().float() - old_per_token_logps.float()
        advantages = inputs["advantages"]
        w = fipo_weights(
            log_ratio,
            advantages,
            mask,
            decay_rate=self.args.fipo_decay_rate,
            clip_range=self.args.fipo_clip_range,
            clip_high_only=self.args.fipo_clip_high_only,
            safety_threshold=self.args.fipo_safety_threshold,
            dual_clip_ratio=self.args.delta,
        )

        # docs/fipo.md §2.1: beyond ±20 the official ratio is exp(±20) without gradient; other log-probs pass untouched
        outside = log_ratio.abs() > LOG_RATIO_CLAMP
        clamped = old_per_token_logps + w.log_ratio.to(per_token_logps.dtype)
        clamped_logps = torch.where(outside, clamped, per_token_logps)
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        keep = w.keep.to(completion_mask.dtype)
        fipo_inputs = {
            **inputs,  # a shallow copy: the buffered slice is reused by later iterations, never write into it
            "advantages": advantages * w.weights.to(advantages.dtype),  # Ã = A·f (docs/fipo.md §2.6), f detached
            "tool_mask": keep if "tool_mask" not in inputs else inputs["tool_mask"] * keep,  # sequence drop (§2.7)
        }
        self._forward_cache = (clamped_logps, entropies, aux_loss)
        try:
            loss = super()._compute_loss(model, fipo_inputs)
        finally:
            unused, self._forward_cache = self._forward_cache is not None, None
        if unused:
            raise RuntimeError(
                "GRPOTrainer._compute_loss did not request the policy forward: this TRL version is not supported "
                "by fipo_trl (pinned to trl>=1.16,<1.17)."
            )

        self._log_fipo_metrics(w, inputs["advantages"], mask)
        if self.model.training and w.log_ratio.abs().amax() > 0:
            self._keep_token_view(inputs, w, advantages, mask)
        return loss

    def _policy_forward(self, model, inputs):
        """The policy's per-token log-probs, entropies and aux loss on `inputs`, as TRL's own loss computes them."""
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        return self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"),
            num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"),
            token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_position_ids=inputs.get("image_position_ids"),
        )

    def _keep_token_view(self, inputs, w, advantages, mask):
        """Keep the latest off-policy completion for the token view: the longest one whose advantage is not zero."""
        lengths = mask.sum(-1) * (advantages != 0).any(-1)  # the weights of an A = 0 row change nothing
        row = int(lengths.argmax()) if lengths.any() else int(mask.sum(-1).argmax())
        length = int(mask[row].sum())
        self.fipo_token_view = {
            "prompt_ids": inputs["prompt_ids"][row][inputs["prompt_mask"][row].bool()].detach(),
            "completion_ids": inputs["completion_ids"][row, :length].detach(),
            "weights": w.weights[row, :length],
            "log_ratio": w.log_ratio[row, :length],
            "advantage": advantages[row].flatten()[0].detach(),
        }

    def _log_fipo_metrics(self, w, advantages, mask):
        mode = "train" if self.model.training else "eval"
        stats = fipo_diagnostics(
            w,
            advantages,
            mask,
            weight_bounds=weight_bounds(self.args.fipo_clip_range, self.args.fipo_clip_high_only),
            dual_clip_ratio=self.args.delta,
        )
        # Two collectives per micro-step, run by every process in the same order
        totals = self.accelerator.reduce(torch.stack(list(stats.sums.values())), reduction="sum")
        for name, (total, count) in zip(stats.sums, totals.tolist(), strict=True):
            self._metrics[mode][f"fipo/{name}"].append(total / count if count > 0 else float("nan"))
        local = torch.stack([*stats.minima.values(), *stats.maxima.values(), *stats.quantiles.values()]).float()
        gathered = self.accelerator.gather(local).view(-1, local.numel())
        n_min, n_max = len(stats.minima), len(stats.minima) + len(stats.maxima)
        values = [*gathered[:, :n_min].amin(0), *gathered[:, n_min:n_max].amax(0), *gathered[:, n_max:].nanmean(0)]
        for name, value in zip([*stats.minima, *stats.maxima, *stats.quantiles], values, strict=True):
            value = value.item()
            self._metrics[mode][f"fipo/{name}"].append(value if abs(value) != float("inf") else float("nan"))
