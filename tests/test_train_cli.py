"""`fipo-trl train`: a short CPU run from the shipped model, resuming it, and one-line errors for bad recipes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import FAST_RUN, as_flags

from fipo_trl.cli import main as cli_main
from fipo_trl.cli.recipe import FIPOScriptArguments, make_parser, parse_recipe
from fipo_trl.cli.train import main as train_main
from fipo_trl.data.math_datasets import get_dataset
from fipo_trl.errors import UsageError
from fipo_trl.model_loading import ASSETS_DIR, resolve_model_path
from fipo_trl.rewards import get_reward_funcs


RECIPE = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
SHIPPED_MODEL = ASSETS_DIR / "tiny-qwen2-addition"
# conftest's fast run with 8 held-out problems and a checkpoint at every step
FAST = as_flags({**FAST_RUN, "heldout_size": 8, "save_steps": 1})
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """Output folder of a 2-step quickstart run (wandb offline), shared by the tests that read it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("quickstart")
    try:
        assert cli_main(["train", str(RECIPE), *FAST, "--max_steps", "2", "--output_dir", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_quickstart_recipe_parses_into_the_three_dataclasses():
    script_args, training_args, model_args = make_parser().parse_args_and_config(["--config", str(RECIPE)])
    assert isinstance(script_args, FIPOScriptArguments) and script_args.dataset_name == "synthetic"
    assert model_args.model_name_or_path == "fipo_trl/assets/tiny-qwen2-addition"
    assert training_args.steps_per_generation == 8 * training_args.gradient_accumulation_steps
    assert not training_args.bf16 and not training_args.gradient_checkpointing


def test_short_run_writes_model_checkpoints_and_token_view(two_step_run):
    assert (two_step_run / "model.safetensors").is_file() and (two_step_run / "tokenizer.json").is_file()
    state = json.loads((two_step_run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logged = {key for entry in state["log_history"] for key in entry}
    assert {"reward", "accuracy", "completions/mean_length", "fipo/weight_mean"} <= logged
    assert (two_step_run / "token_view" / "step_000002.html").is_file()
    assert "FIPO token influence, step 2" in (two_step_run / "token_view" / "latest.html").read_text()
    # wandb (offline) got the same page as an Html media file
    assert list((two_step_run / "wandb").glob("offline-run-*/files/media/html/train/token_view_*.html"))


def test_model_card_names_the_model_trained_from(two_step_run):
    card = (two_step_run / "README.md").read_text()
    assert "[None]" not in card and "huggingface.co/None" not in card
    assert "fine-tuned version of `fipo_trl/assets/tiny-qwen2-addition` (a local model)." in card
    assert "huggingface.co/datasets/synthetic" not in card  # the generator is no Hub dataset


def test_resume_continues_the_step_count(two_step_run, tmp_path):
    # a copy: the shared run stays as the other tests expect it, whatever order they run in
    out = shutil.copytree(two_step_run, tmp_path / "run")
    assert not (out / "checkpoint-3").exists()
    argv = ["train", str(RECIPE), *FAST, "--max_steps", "3", "--output_dir", str(out)]
    assert cli_main([*argv, "--resume_from_checkpoint", "last", "--report_to", "none"]) == 0
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    # the resumed run logged only step 3; steps 1-2 come from the checkpoint it started from
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3]


def write_recipe(tmp_path, **changes):
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def one_line_error(capsys, argv):
    assert cli_main(["train", *argv]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fipo-trl train: error: ")]
    assert "Traceback" not in err and len(errors) == 1, err  # progress bars of `datasets` may precede it
    return errors[0]


def test_unknown_field_is_named(tmp_path, capsys):
    assert "learning_rat" in one_line_error(capsys, [write_recipe(tmp_path, learning_rat=1e-5)])


def test_unknown_cli_flag_is_named(capsys):
    assert "--num_generation" in one_line_error(capsys, [str(RECIPE), "--num_generation", "4"])


def test_missing_dataset_column_is_named(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "1+1=?", "solution": "2"}\n')
    err = one_line_error(capsys, [write_recipe(tmp_path, dataset_name=str(data))])
    assert "'prompt'" in err and "question" in err


def test_missing_model_path_is_named(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    assert missing in one_line_error(capsys, [write_recipe(tmp_path, model_name_or_path=missing)])


def test_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    err = one_line_error(capsys, [str(RECIPE), "--output_dir", str(tmp_path), "--resume_from_checkpoint", "last"])
    assert "no checkpoint" in err


def test_console_script_exits_non_zero_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fipo_trl", "train", str(tmp_path / "missing.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fipo-trl train: error: recipe file not found" in result.stderr


def test_dapo_math_copy_is_read_through_its_loader(tmp_path):
    # a local copy in verl's layout (answer under reward_model) comes out as prompt/solution rows
    row = {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": "Solve 1+1. Answer: $Answer"}],
        "ability": "MATH",
        "reward_model": {"ground_truth": "2", "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": "0"},
    }
    path = tmp_path / "dapo-math-17k.jsonl"
    path.write_text(json.dumps(row) + "\n")
    train, heldout = get_dataset(FIPOScriptArguments(dataset_name=str(path)))
    assert train[0]["solution"] == "2" and train[0]["prompt"][0]["content"].startswith("Solve 1+1")
    assert heldout is None


def test_shipped_model_path_resolves_outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an installed package, run from anywhere
    assert resolve_model_path("fipo_trl/assets/tiny-qwen2-addition") == str(SHIPPED_MODEL)
    assert resolve_model_path("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"  # Hub ids pass through


def test_without_wandb_the_recipe_falls_back_to_console_logging(monkeypatch, tmp_path, caplog):
    # wandb is a dependency, so its absence is simulated: the same recipe keeps wandb when it imports
    from fipo_trl.run.setup import set_up_wandb

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # else set_up_wandb would set it for the rest of the session
    _, training_args, _ = parse_recipe([str(RECIPE), "--output_dir", str(tmp_path / "with")])
    set_up_wandb(training_args)
    assert training_args.report_to == ["wandb"] and (tmp_path / "with").is_dir()

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    _, training_args, _ = parse_recipe([str(RECIPE), "--output_dir", str(tmp_path / "without")])
    assert training_args.report_to == ["wandb"]
    set_up_wandb(training_args)
    assert training_args.report_to == []
    assert "wandb is not installed (pip install wandb): logging to the console only." in caplog.text


def test_first_reward_also_logs_accuracy_and_unknown_names_are_errors():
    args = FIPOScriptArguments(reward_funcs=["dapo_accuracy", "soft_overlong"])
    accuracy, overlong = get_reward_funcs(args, SimpleNamespace(max_completion_length=16))
    logged = {}
    rewards = accuracy(["Answer: 2", "Answer: 3"], solution=["2", "2"], log_metric=logged.__setitem__)
    assert rewards == [1.0, -1.0] and logged == {"accuracy": 0.5}
    assert accuracy.__name__ == "dapo_accuracy_reward"  # TRL names the reward metrics after it
    with pytest.raises(UsageError, match="unknown reward function 'accuracy'"):
        get_reward_funcs(FIPOScriptArguments(reward_funcs=["accuracy"]), SimpleNamespace(max_completion_length=16))


def test_math_eval_datasets_are_evaluated_during_training(tmp_path, tiny_model_dir):
    # the recipe's math_eval_* fields attach MathEvalCallback: eval_<name>/avg@k reaches the trainer's logs
    problems = tmp_path / "sums.jsonl"
    problems.write_text('{"problem": "12+30=?", "answer": "42"}\n{"problem": "5+6=?", "answer": "11"}\n')
    out = tmp_path / "run"
    argv = [str(RECIPE), *FAST, "--max_steps", "2", "--output_dir", str(out), "--report_to", "none"]
    argv += ["--model_name_or_path", tiny_model_dir]  # benchmark prompts are chat messages: a chat template
    argv += ["--math_eval_datasets", str(problems), "--math_eval_steps", "2", "--math_eval_k", "2"]
    train_main(*parse_recipe([*argv, "--token_view", "false", "--heldout_size", "0"]))
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert any("eval_sums/avg@2" in entry and "eval_sums/pass@2" in entry for entry in state["log_history"])


def test_unknown_math_eval_dataset_is_named(capsys):
    assert "no-such-benchmark" in one_line_error(capsys, [str(RECIPE), "--math_eval_datasets", "no-such-benchmark"])


def test_help_shows_the_call_and_the_recipe_fields_without_importing_torch():
    # a fresh interpreter: `--help` must not pay for torch/GRPOConfig (seconds) to print one screen
    code = (
        "import sys; from fipo_trl.cli import main; main(['train', '--help']); "
        "print('IMPORTED', 'torch' in sys.modules, 'trl.trainer.grpo_config' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = result.stdout
    assert out.startswith("usage: fipo-trl train RECIPE.yaml [--field value ...]")
    assert "IMPORTED False False" in out
    for name in ("--dataset_name", "--reward_funcs", "--heldout_size", "--fipo_decay_rate", "--fipo_clip_range"):
        assert name in out
    assert "--help-all" in out and len(out.splitlines()) < 60


@pytest.mark.parametrize(
    ("command", "user_setting", "threads"),
    [("train", None, 1), ("train", "2", 2), ("eval", None, None), ("eval", "1", 1)],
)
def test_train_defaults_torch_to_one_cpu_thread_eval_to_torchs_own(command, user_setting, threads):
    # a fresh interpreter, as the console script starts: the rule must act before torch is imported. The command's
    # module is a probe that reports the thread count torch starts with (the real ones import torch the same way)
    code = (
        "import sys, types; from fipo_trl import cli\n"
        "assert 'torch' not in sys.modules\n"
        "probe = types.ModuleType('probe')\n"
        "def report(args):\n"
        "    import torch; print('THREADS', torch.get_num_threads()); return 0\n"
        f"probe.cli = report; sys.modules['probe'] = probe; cli.COMMANDS[{command!r}] = ('probe', 'cli', '')\n"
        f"sys.exit(cli.main([{command!r}]))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    if user_setting is not None:
        env["OMP_NUM_THREADS"] = user_setting
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    # None: torch's own default (one thread per core), whatever this machine has
    assert result.stdout.split() == ["THREADS", str(threads or torch_default_threads(env))]


def torch_default_threads(env):
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout)


def test_help_all_lists_every_grpo_field(capsys):
    assert cli_main(["train", "--help-all"]) == 0
    out = capsys.readouterr().out
    assert "--num_generations" in out and "--fipo_safety_threshold" in out and "--learning_rate" in out


def test_unknown_command_and_no_recipe_exit_2(capsys):
    assert cli_main(["trian", "configs/quickstart.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fipo-trl: unknown command 'trian'\nusage: fipo-trl {train,check,eval}")
    assert "no recipe" in one_line_error(capsys, [])


def test_rewards_by_dotted_path_and_registry_names():
    from fipo_trl.rewards import REWARD_FUNCS_REGISTRY

    assert set(REWARD_FUNCS_REGISTRY) == {"dapo_accuracy", "math_verify", "soft_overlong"}
    (accuracy,) = get_reward_funcs(
        FIPOScriptArguments(reward_funcs=["fipo_trl.rewards.dapo_accuracy_reward"]), SimpleNamespace()
    )
    assert accuracy.__name__ == "dapo_accuracy_reward" and accuracy(["Answer: 2"], solution=["2"]) == [1.0]
    with pytest.raises(UsageError, match="cannot import reward function 'fipo_trl.rewards.nope'"):
        get_reward_funcs(FIPOScriptArguments(reward_funcs=["fipo_trl.rewards.nope"]), SimpleNamespace())


def test_output_dir_is_checked_once_on_the_way_to_training(tmp_path, capsys, monkeypatch):
    # `fipo-trl train` checks output_dir in one place (check_training_args), not once per layer it passes
    from fipo_trl.run import preflight

    calls, check = [], preflight.check_output_dir
    monkeypatch.setattr(preflight, "check_output_dir", lambda path: calls.append(path) or check(path))
    # refused after every check of training_args and the output_dir lock: 100000 tokens exceed the model's positions
    argv = [str(RECIPE), "--output_dir", str(tmp_path / "run"), "--max_completion_length", "100000"]
    assert "max_completion_length" in one_line_error(capsys, argv)
    assert calls == [str(tmp_path / "run")]


def test_the_comparison_example_gets_the_pre_flight_checks_of_train(tmp_path):
    # examples/compare_dapo_fipo.py builds its runs on train's set-up (prepare_run): a bad setting is refused there
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare", RECIPE.parents[1] / "examples" / "compare_dapo_fipo.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    lib = compare.library()
    argv = [str(RECIPE), "--output_dir", str(tmp_path / "run"), "--report_to", "none", "--top_p", "0"]
    with pytest.raises(UsageError, match=r"^top_p: 0\.0 must be in \(0, 1\]"):
        lib.prepare(*lib.parse_recipe(argv))
    job = lib.prepare(*lib.parse_recipe(argv[:-2]))
    assert job.model_name_or_path == resolve_model_path("fipo_trl/assets/tiny-qwen2-addition")
    assert len(job.train_dataset) and job.resume_from_checkpoint is None
