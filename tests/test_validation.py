"""Checks made before a model loads: YAML file:line, data file and row, training fields, output_dir."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from fipo_trl.cli.recipe import read_yaml_file
from fipo_trl.errors import UsageError
from fipo_trl.run.preflight import check_data_file, check_output_dir, check_prompts, check_training_args


def test_recipe_yaml_is_read_as_a_mapping(tmp_path):
    (tmp_path / "r.yaml").write_text("learning_rate: 1.0e-5\nreward_funcs: [dapo_accuracy]\n")
    assert read_yaml_file(tmp_path / "r.yaml") == {"learning_rate": 1e-5, "reward_funcs": ["dapo_accuracy"]}
    (tmp_path / "empty.yaml").write_text("# only a comment\n")
    assert read_yaml_file(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a: 1\nlearning_rate: [1\nfoo: bar\n",
            r"r\.yaml:3:4: expected ',' or '\]', but got ':' "
            r"\(while parsing a flow sequence, which starts at line 2\)",
        ),
        ("a: 1\n  b: 2\n", r"r\.yaml:2:4: mapping values are not allowed here"),
        ("a: 1\n\tb: 2\n", r"r\.yaml:2:1: found character '\\t' that cannot start any token"),
        ("- a\n- b\n", r"r\.yaml: the recipe must be 'field: value' lines, not a list"),
    ],
)
def test_malformed_yaml_names_file_line_and_problem(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UsageError, match=message):
        read_yaml_file(tmp_path / "r.yaml")


def test_missing_and_non_utf8_recipes(tmp_path):
    with pytest.raises(UsageError, match="recipe file not found: .*missing.yaml"):
        read_yaml_file(tmp_path / "missing.yaml")
    (tmp_path / "r.yaml").write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(UsageError, match=r"r\.yaml:2: byte 0xe9 is not UTF-8"):
        read_yaml_file(tmp_path / "r.yaml")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.jsonl", b"", r"d\.jsonl is empty"),
        ("d.jsonl", b"\n  \n", r"d\.jsonl is empty"),
        ("d.json", b"", r"d\.json is empty"),
        (
            "d.jsonl",
            b'{"prompt": "1+1", "solution": "2"}\n\n{"prompt": "\xff", "solution": "3"}\n',
            r"d\.jsonl, row 2 \(line 3\): byte 0xff at column 13 is not UTF-8",
        ),
        (
            "d.jsonl",
            b'{"prompt": "1+1", "solution": "2"}\n{"prompt": "2+2", "solution": 4\n',
            r"d\.jsonl, row 2: not valid JSON \(Expecting ',' delimiter at column 32\)",
        ),
        ("d.jsonl", b'["1+1", "2"]\n', r"d\.jsonl, row 1: a list, expected a JSON object per line"),
        ("d.json", b'[{"prompt": "\xfe"}]', r"d\.json:1: byte 0xfe is not UTF-8"),
        ("d.json", b'[{"prompt": "1+1",\n "solution": }]', r"d\.json:2:14: not valid JSON"),
        ("d.json", b'{"prompt": "a"}\n{"prompt": "b", "solution": \xff}\n', r"d\.json:2: byte 0xff is not UTF-8"),
        ("d.parquet", b"PAR1 not really", r"d\.parquet: not a readable parquet file"),
    ],
)
def test_bad_data_files_name_file_and_row(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UsageError, match=message):
        check_data_file(tmp_path / name)


def test_sound_data_files_pass(tmp_path):
    import datasets

    (tmp_path / "d.jsonl").write_text('{"prompt": "1+1=?", "solution": "2"}\n')
    (tmp_path / "d.json").write_text('[{"prompt": "1+1=?", "solution": "2"}]')
    check_data_file(tmp_path / "d.jsonl")
    check_data_file(tmp_path / "d.json")
    datasets.Dataset.from_dict({"prompt": ["a"], "solution": ["1"]}).to_parquet(str(tmp_path / "d.parquet"))
    check_data_file(tmp_path / "d.parquet")
    datasets.Dataset.from_dict({"prompt": ["a"], "solution": ["1"]}).select([]).to_parquet(str(tmp_path / "e.parquet"))
    with pytest.raises(UsageError, match=r"e\.parquet has no rows"):
        check_data_file(tmp_path / "e.parquet")
    check_data_file("BytedTsinghua-SIA/DAPO-Math-17k")  # a Hub id is left to `datasets`


def test_empty_prompt_names_the_row():
    check_prompts({"prompt": ["1+1=?", [{"role": "user", "content": "2+2=?"}]]}, "train.jsonl")
    with pytest.raises(UsageError, match=r"train\.jsonl, row 2: the prompt is empty"):
        check_prompts({"prompt": ["1+1=?", "  ", None]}, "train.jsonl")


def test_output_dir_that_is_a_file_or_unwritable_is_refused(tmp_path):
    check_output_dir(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match=r"output_dir: .*afile is a file, not a folder"):
        check_output_dir(tmp_path / "afile")
    with pytest.raises(UsageError, match=r"output_dir: cannot write to .*afile/run \(Not a directory\)"):
        check_output_dir(tmp_path / "afile" / "run")


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux's read-only /sys")
def test_read_only_output_dir_is_refused():
    # /sys refuses new folders even to root, unlike a chmod-ed folder
    with pytest.raises(UsageError, match=r"output_dir: cannot write to /sys/fipo-run \(Operation not permitted\)"):
        check_output_dir("/sys/fipo-run")


# the training fields check_training_args reads, at the quickstart's values
SOUND_TRAINING_FIELDS = {
    "max_steps": -1,
    "num_train_epochs": 3.0,
    "learning_rate": 5e-5,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": None,
    "max_completion_length": 16,
}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_steps": 0}, "max_steps: 0 trains nothing"),
        ({"num_train_epochs": 0}, "num_train_epochs: 0 trains nothing with max_steps -1"),
        ({"num_train_epochs": -1.0}, "num_train_epochs: -1 trains nothing"),
        ({"temperature": 0.0}, r"temperature: 0\.0 must be > 0"),
        ({"temperature": float("inf")}, "temperature: inf must be > 0"),
        ({"top_p": 1.5}, r"top_p: 1\.5 must be in \(0, 1\]"),
        ({"top_p": 0.0}, r"top_p: 0\.0 must be in"),
        ({"top_k": -1}, "top_k: -1 must be >= 0"),
        ({"min_p": 2.0}, r"min_p: 2\.0 must be in \[0, 1\]"),
        ({"max_completion_length": 0}, "max_completion_length: 0 must be >= 1"),
        ({"learning_rate": -1e-4}, r"learning_rate: -0\.0001 must be a finite number >= 0"),
        ({"learning_rate": float("nan")}, "learning_rate: nan must be"),
    ],
)
def test_training_fields_that_train_nothing_are_refused(fields, message, tmp_path):
    args = SimpleNamespace(**{**SOUND_TRAINING_FIELDS, "output_dir": str(tmp_path), **fields})
    with pytest.raises(UsageError, match=message):
        check_training_args(args)


def test_sound_training_fields_pass(tmp_path):
    sound = {**SOUND_TRAINING_FIELDS, "output_dir": str(tmp_path / "run")}
    check_training_args(SimpleNamespace(**{**sound, "learning_rate": 0.0}))
    check_training_args(SimpleNamespace(**{**sound, "max_steps": 400, "top_p": 0.7, "min_p": 0.1}))
    assert (tmp_path / "run").is_dir()  # the one call of the training checks also makes output_dir


def test_training_checks_include_the_output_dir(tmp_path):
    # every check of training_args alone is one call: an output_dir that is a file is refused by it too
    (tmp_path / "taken").write_text("")
    with pytest.raises(UsageError, match="output_dir: .* is a file, not a folder"):
        check_training_args(SimpleNamespace(**SOUND_TRAINING_FIELDS, output_dir=str(tmp_path / "taken")))


def test_training_and_eval_share_one_sampling_check(tmp_path):
    # the recipe's temperature and fipo-trl eval's --temperature are refused by one rule, in the same words
    from fipo_trl.evaluation.generation import Sampling

    with pytest.raises(UsageError) as training:
        check_training_args(SimpleNamespace(**{**SOUND_TRAINING_FIELDS, "output_dir": str(tmp_path), "top_p": 0}))
    with pytest.raises(UsageError) as evaluation:
        Sampling(top_p=0, max_tokens=16)
    assert str(training.value) == str(evaluation.value) == "top_p: 0 must be in (0, 1] (1.0 keeps every token)"
