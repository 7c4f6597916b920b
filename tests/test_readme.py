"""The README's Python usage example runs as written (on the shipped tiny model, offline)."""

from pathlib import Path


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
