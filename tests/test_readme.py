"""The README's Python usage example and its eval command, the examples of docs/rewards-and-data.md and of the trainer
page docs/fipo_trainer.md, run as written (on the shipped tiny model, offline)."""

import json
import re
import shlex
import sys
import types
from pathlib import Path

import pytest

from fipo_trl.cli import main as fipo_trl


pytestmark = pytest.mark.slow  # each test trains or evaluates the shipped model as a user would (tens of seconds)


ROOT = Path(__file__).resolve().parents[1]


def test_readme_usage_snippet_trains(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    usage = readme[readme.index("## Usage") :]
    start = usage.index("```python") + len("```python")
    code = usage[start : usage.index("```", start)]
    code = code.replace('"fipo_trl/assets/', f'"{ROOT}/fipo_trl/assets/')
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md (Usage)", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == trainer.args.max_steps
    assert any("fipo/weight_mean" in h for h in trainer.state.log_history)


def test_readme_commands_keep_their_venvs_apart():
    # command 2 installs the test extras: in the quickstart's own .venv it would change what command 1 installed
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("```bash") : readme.index("```", readme.index("```bash") + 3)]
    venvs = re.findall(r"python3 -m venv (\S+) && \. (\S+)/bin/activate", block)
    assert len(venvs) == 2 and all(made == used for made, used in venvs) and venvs[0][0] != venvs[1][0], venvs
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert all(f"{made}/" in ignored for made, _ in venvs)


def test_readme_eval_command_runs_on_the_shipped_model(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith("fipo-trl eval --model_name_or_path fipo_trl/")]
    assert len(lines) == 1, "the README shows one eval command on the shipped model"
    command = shlex.split(lines[0].split("#")[0])
    monkeypatch.chdir(tmp_path)  # the shipped model's path resolves from the installed package
    assert fipo_trl(command[1:]) == 0
    summary = json.loads((tmp_path / "outputs" / "eval" / "synthetic.summary.json").read_text())
    assert summary["num_problems"] == 256 and 0 < summary["metrics"][f"avg@{summary['k']}"] < 1


def test_rewards_page_example_prints_what_its_comments_say(tmp_path, monkeypatch, capsys):
    page = (ROOT / "docs" / "rewards-and-data.md").read_text()
    example = page[page.index("## Example") :]
    start = example.index("```python") + len("```python")
    code = example[start : example.index("```", start)]
    expected = [match[1] for match in re.finditer(r"^print\(.*\)  # (.*)$", code, re.MULTILINE)]
    assert len(expected) == 5, "each print of the example says what it prints"
    monkeypatch.chdir(tmp_path)  # the example writes its small data files in the working directory
    exec(compile(code, "docs/rewards-and-data.md (Example)", "exec"), {})
    assert capsys.readouterr().out.splitlines() == expected


def python_blocks(text):
    """The ```python blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_trainer_page_quick_start_and_every_extra_run(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "fipo_trainer.md").read_text()
    quick_start = python_blocks(page[page.index("## Quick start") : page.index("## What FIPO changes")])
    extras = python_blocks(page[page.index("## The extras") : page.index("## FIPOTrainer")])
    assert len(quick_start) == 1 and len(extras) == 4, "the quick start and one snippet per extra"
    monkeypatch.chdir(tmp_path)
    # run as a user's script is: a module of its own, so that a checkpoint can pickle the classes the snippets define
    script = types.ModuleType("fipo_trainer_page")
    monkeypatch.setitem(sys.modules, script.__name__, script)
    namespace, trainers = script.__dict__, []
    for number, code in enumerate(quick_start + extras):  # the extras reuse the quick start's names
        code = code.replace('"fipo_trl/assets/', f'"{ROOT}/fipo_trl/assets/')
        exec(compile(code, f"docs/fipo_trainer.md (snippet {number})", "exec"), namespace)
        trainers.append(namespace["trainer"])
        assert trainers[-1].state.global_step == trainers[-1].args.max_steps
    names = [type(trainer).__name__ for trainer in trainers]
    assert names == ["FIPOTrainer", "FilteredFIPOTrainer", "DAPOTrainer", "ResumableFIPOTrainer", "FIPOTrainer"]
    for filtered in trainers[1:3]:  # dynamic sampling ran
        assert any("num_gen_batches" in entry for entry in filtered.state.log_history)
    assert (tmp_path / "outputs" / "fipo-resumable" / "checkpoint-3" / "fipo_generation_state_0.pt").is_file()
    assert any(type(c).__name__ == "RewardSpreadCallback" for c in trainers[-1].callback_handler.callbacks)
