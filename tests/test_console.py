"""What `fipo-trl train` prints while it trains: a few metrics per log (`console_metrics`), and no stray warnings."""

import ast
import warnings

import pytest
import torch
from torch.nn.modules.module import _IncompatibleKeys
from transformers.utils import logging as transformers_logging

from fipo_trl import ExactResumeMixin, FIPOTrainer
from fipo_trl.callbacks import BRIEF_METRICS, get_callbacks
from fipo_trl.cli.recipe import FIPOScriptArguments, parse_recipe
from fipo_trl.errors import UsageError


def train_and_read_console(trainer, console_metrics, capsys):
    """Train with the console callbacks of a recipe; return the printed logs (dicts) and `log_history`."""
    script_args = FIPOScriptArguments(console_metrics=console_metrics, token_view=False)
    for callback in get_callbacks(script_args, trainer.args, trainer):
        trainer.add_callback(callback)
    capsys.readouterr()
    trainer.train()
    printed = [ast.literal_eval(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return printed, trainer.state.log_history


@pytest.mark.parametrize("disable_tqdm", [False, True], ids=["progress_bar", "printer"])
def test_brief_console_prints_the_step_and_seven_metrics_while_log_history_keeps_all(
    make_trainer, capsys, disable_tqdm
):
    trainer = make_trainer(max_steps=2, disable_tqdm=disable_tqdm)
    printed, history = train_and_read_console(trainer, "brief", capsys)
    training = [logs for logs in printed if "loss" in logs]
    logged = [entry for entry in history if "loss" in entry]
    assert [logs["step"] for logs in training] == [entry["step"] for entry in logged] == [1, 2]
    for logs, entry in zip(training, logged, strict=True):
        assert list(logs) == ["step", *(key for key in BRIEF_METRICS if key in entry)]
        assert logs["fipo/weight_mean"] == f"{entry['fipo/weight_mean']:.4g}"
        assert len(entry) > 40 and "fipo/pos_is_p999" in entry  # every metric stays in log_history
    # step 1 generated (step 2 reused its batch, so TRL logs no reward then); `accuracy` comes from the recipe's
    # reward wrapper (fipo_trl.rewards), which this trainer does not use
    assert set(training[0]) == {"step", *BRIEF_METRICS} - {"accuracy"}
    # the end-of-training summary is not a training log: printed whole
    assert any("train_runtime" in logs and "train_loss" in logs for logs in printed)


def test_full_console_prints_every_metric(make_trainer, capsys):
    trainer = make_trainer(max_steps=1, disable_tqdm=True)
    printed, history = train_and_read_console(trainer, "full", capsys)
    training = [logs for logs in printed if "loss" in logs]
    # log_history adds the step; "full" is transformers' own console: every metric the trainer logged
    assert len(training) == 1 and {*training[0], "step"} == set(history[0]) > {*BRIEF_METRICS} - {"accuracy"}
    assert "fipo/pos_is_p999" in training[0]


@pytest.mark.parametrize(
    "argv",
    [["--console_metrics", "quiet"], ["--config", "RECIPE"]],
    ids=["flag", "yaml"],
)
def test_console_metrics_other_than_brief_or_full_is_refused(tmp_path, argv):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("console_metrics: quiet\n")
    argv = [str(recipe) if arg == "RECIPE" else arg for arg in argv]
    with pytest.raises(UsageError, match="console_metrics"):
        parse_recipe(argv)


def test_without_an_accelerator_nothing_is_pinned_and_torch_does_not_warn(make_trainer):
    # torch warns "'pin_memory' argument is set as true but no accelerator is found" at every dataloader
    # not use_cpu (for which transformers already unpins): a recipe run on a machine without a GPU
    trainer = make_trainer(max_steps=1, use_cpu=False)
    assert trainer.args.dataloader_pin_memory is torch.accelerator.is_available()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "pin_memory" in str(w.message)]


@pytest.fixture
def transformers_warnings(caplog):
    """transformers' log records, which its library logger does not hand to the root logger by default."""
    transformers_logging.enable_propagation()
    yield caplog
    transformers_logging.disable_propagation()


def test_resuming_a_tied_model_reports_no_missing_lm_head(make_trainer, tied_model_dir, transformers_warnings):
    # the checkpoint of a tied model leaves out lm_head.weight, which loading embed_tokens.weight restores; the hook
    # that says so is ExactResumeMixin's, which `fipo-trl train` composes in
    class Resumable(ExactResumeMixin, FIPOTrainer):
        pass

    saving = {"model": tied_model_dir, "trainer_cls": Resumable, "save_strategy": "steps", "save_steps": 2}
    make_trainer(max_steps=2, **saving).train()
    resumed = make_trainer(max_steps=3, **saving)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.model.lm_head.weight is resumed.model.model.embed_tokens.weight
    assert "missing keys" not in transformers_warnings.text
    # a key that no tie restores is still reported
    resumed._issue_warnings_after_load(_IncompatibleKeys(["lm_head.weight", "model.norm.weight"], []))
    assert "missing keys in the checkpoint model loaded: ['model.norm.weight']" in transformers_warnings.text
