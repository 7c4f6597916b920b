"""Token influence view: colours follow f_t, hover text carries Δ_t, and the callback writes once per new view."""

from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState

from fipo_trl import FIPOConfig
from fipo_trl.callbacks import TokenViewCallback
from fipo_trl.token_view import render_token_view, weight_colour


def test_colour_is_white_at_one_red_above_blue_below():
    assert weight_colour(1.0, 0.8, 1.2) == "rgb(255,255,255)"
    assert weight_colour(1.2, 0.8, 1.2) == "rgb(255,0,0)"
    assert weight_colour(0.8, 0.8, 1.2) == "rgb(0,0,255)"
    assert weight_colour(5.0, 0.8, 1.2) == "rgb(255,0,0)"  # beyond the range: clamped, not wrapped
    assert weight_colour(1.05, 0.8, 1.2) == "rgb(255,191,191)"


def test_each_token_is_a_span_with_its_weight_and_log_ratio_on_hover():
    page = render_token_view(["<b>", "x"], [1.2, 1.0], [0.5, -0.25], advantage=1.0)
    assert page.count('class="t" style') == 2 + 3  # two tokens and the three legend swatches
    assert "&lt;b&gt;" in page and "<b>" not in page.split("<body>")[1].split('<div class="c">')[1]
    assert "f=1.2000" in page and "Δ=+0.5" in page and "Δ=-0.25" in page
    assert "A = +1.000" in page


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="differ in length"):
        render_token_view(["a"], [1.0, 1.0], [0.0], advantage=0.0)


class CharTokenizer:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i) for i in ids)


def trainer_with_a_view(tmp_path, report_to="none"):
    """A stand-in for the trainer with only what `TokenViewCallback` reads: `args`, the view, a tokenizer."""
    args = FIPOConfig(output_dir=str(tmp_path), report_to=report_to, fipo_clip_high_only=False, bf16=False)
    view = {
        "prompt_ids": torch.tensor([3, 4]),
        "completion_ids": torch.tensor([0, 1, 2]),
        "weights": torch.tensor([1.0, 1.15, 0.9]),
        "log_ratio": torch.tensor([0.0, 0.1, -0.2]),
        "advantage": torch.tensor(-0.5),
    }
    return SimpleNamespace(args=args, fipo_token_view=view, processing_class=CharTokenizer())


def test_callback_writes_step_file_and_latest_once_per_view(tmp_path):
    trainer = trainer_with_a_view(tmp_path)
    callback = TokenViewCallback(trainer)
    assert callback.weight_range == (0.8, 1.2)
    state = TrainerState(global_step=7)
    callback.on_log(trainer.args, state, TrainerControl(), logs={})
    step_file = tmp_path / "token_view" / "step_000007.html"
    assert step_file.read_text() == (tmp_path / "token_view" / "latest.html").read_text()
    assert ">a</span>" in step_file.read_text() and "A = -0.500" in step_file.read_text()
    assert '<pre class="c">de</pre>' in step_file.read_text()  # the prompt, above the completion
    # the same view object at the next log is not rendered again
    state.global_step = 8
    callback.on_log(trainer.args, state, TrainerControl(), logs={})
    assert not (tmp_path / "token_view" / "step_000008.html").exists()


def test_callback_skips_non_main_process_and_missing_view(tmp_path):
    trainer = trainer_with_a_view(tmp_path)
    callback = TokenViewCallback(trainer)
    callback.on_log(trainer.args, TrainerState(global_step=1, is_world_process_zero=False), TrainerControl())
    trainer.fipo_token_view = None
    callback.on_log(trainer.args, TrainerState(global_step=2), TrainerControl())
    assert not (tmp_path / "token_view").exists()
