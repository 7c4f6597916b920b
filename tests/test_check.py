"""`fipo-trl check`: geometry for N processes, the FIPO verdict, memory, warnings, and every shipped recipe/config."""

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DeepSpeedPlugin
from datasets import Dataset
from transformers import AutoModelForCausalLM

from fipo_trl import FIPOConfig, FIPOTrainer
from fipo_trl.batch_geometry import resolve_geometry
from fipo_trl.cli import main as cli_main
from fipo_trl.cli.check import make_parser, read_accelerate_config
from fipo_trl.errors import UsageError
from fipo_trl.memory_estimate import Sharding, memory_per_gpu, model_shape, parameter_count


ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
# Each shipped recipe with the launch its header comment states: (recipe, accelerate config, processes, nodes)
RECIPES = {
    "fipo_qwen2.5_32b.yaml": ("zero3.yaml", 128, 16),
    "fipo_qwen2.5_math_7b.yaml": ("zero3.yaml", 64, 8),
    "fipo_qwen2.5_math_1.5b_1node.yaml": ("zero2.yaml", 8, 1),
}
BASE = {
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "steps_per_generation": None,
    "generation_batch_size": None,
    "num_generations": 8,
    "num_iterations": 1,
}


def run_check(capsys, *argv):
    code = cli_main(["check", *(str(arg) for arg in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def write_recipe(tmp_path, **fields):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "max_prompt_length": 512, **fields}))
    return path


@pytest.fixture(autouse=True)
def repo_root(monkeypatch):
    # Accelerate configs name their DeepSpeed JSON relative to the repository root, where launches happen
    monkeypatch.chdir(ROOT)


def test_every_recipe_is_listed():
    # A new recipe must be added to RECIPES so that the suite checks it
    assert sorted(p.name for p in (ROOT / "configs" / "recipes").glob("*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_shipped_recipe_reproduces_official_off_policy_structure(recipe, capsys):
    config, processes, nodes = RECIPES[recipe]
    code, out, err = run_check(
        capsys,
        f"configs/recipes/{recipe}",
        "--config_file",
        f"configs/accelerate/{config}",
        "--num_processes",
        processes,
        "--num_machines",
        nodes,
    )
    assert code == 0, err
    print(out)  # shown with -s: the report a user sees
    assert "optimizer steps per generation batch   8 " in out
    assert "active: 7 of 8 steps off-policy    active" in out
    assert "no warnings" in out
    assert "parameters (Qwen2.5-" in out


def test_32b_recipe_matches_official_batch_in_completions(capsys):
    # 512 prompts × 16 = 8192 completions per generation, 1024 (64 prompts) per optimizer step (docs/fipo.md §3.1)
    code, out, _ = run_check(capsys, "configs/recipes/fipo_qwen2.5_32b.yaml", "--num_processes", 128)
    assert code == 0
    assert "prompts per generation batch           512 " in out
    assert "completions per generation batch       8192 (×16) " in out
    assert "completions per optimizer step         1024 " in out
    assert "max tokens per sequence                22528 " in out


def test_32b_recipe_on_64_processes_with_cli_overrides_keeps_geometry(capsys):
    code, out, _ = run_check(
        capsys,
        "configs/recipes/fipo_qwen2.5_32b.yaml",
        "--num_processes",
        64,
        "--gradient_accumulation_steps",
        16,
        "--steps_per_generation",
        128,
    )
    assert code == 0
    assert "completions per optimizer step         1024 " in out
    assert "active: 7 of 8 steps off-policy" in out


def test_same_recipe_on_wrong_process_count_changes_geometry(capsys):
    # The recipe assumes 128 processes: on 8 the batch shrinks 16× while the FIPO structure stays
    code, out, _ = run_check(capsys, "configs/recipes/fipo_qwen2.5_32b.yaml", "--num_processes", 8)
    assert code == 0
    assert "prompts per generation batch           32 " in out


def test_on_policy_recipe_is_reported_identical_to_dapo(tmp_path, capsys):
    recipe = write_recipe(tmp_path, gradient_accumulation_steps=4, steps_per_generation=4, num_generations=8)
    code, out, _ = run_check(capsys, recipe, "--num_processes", 2)
    assert code == 0
    assert "identical to DAPO (all on-policy)" in out
    assert "warning: every optimizer step is on-policy" in out


def test_batch_size_counted_in_prompts_is_flagged(tmp_path, capsys):
    # TRL PR #5434's example: per_device_train_batch_size=512 meant as prompts
    recipe = write_recipe(tmp_path, per_device_train_batch_size=512, num_generations=16, steps_per_generation=8)
    code, out, _ = run_check(capsys, recipe)
    assert code == 0
    assert "per_device_train_batch_size=512 looks like a count of prompts" in out
    assert "32 prompts × 16" in out


def test_num_iterations_instead_of_disjoint_minibatches_is_flagged(tmp_path, capsys):
    recipe = write_recipe(tmp_path, steps_per_generation=1, num_iterations=3)
    code, out, _ = run_check(capsys, recipe)
    assert code == 0
    assert "active: 2 of 3 steps off-policy" in out
    assert "warning: num_iterations=3 revisits the same completions" in out


def test_vllm_importance_sampling_correction_is_flagged_only_when_on(tmp_path, capsys):
    on = write_recipe(tmp_path, use_vllm=True, vllm_mode="server")  # TRL's default: correction on
    code, out, _ = run_check(capsys, on)
    assert code == 0 and "warning: vllm_importance_sampling_correction=True" in out
    off = write_recipe(tmp_path, use_vllm=True, vllm_mode="server", vllm_importance_sampling_correction=False)
    code, out, _ = run_check(capsys, off)
    assert code == 0 and "vllm_importance_sampling_correction" not in out


def test_warmup_in_training_steps_is_flagged(tmp_path, capsys):
    code, out, _ = run_check(capsys, write_recipe(tmp_path, warmup_steps=10))
    assert code == 0
    assert "warning: warmup_steps=10 counts optimizer steps" in out


@pytest.mark.parametrize(
    ("fields", "argv", "message"),
    [
        ({"per_device_train_batch_size": 3, "steps_per_generation": 1}, [], "not divisible by num_generations=8"),
        ({"steps_per_generation": 8, "generation_batch_size": 64}, [], "both set"),
        ({"generation_batch_size": 100}, ["--num_processes", "2"], "generation_batch_size=100 is not divisible"),
        ({}, ["--num_processes", "12", "--num_machines", "5"], "does not split evenly"),
        ({"num_generations": 1}, [], "at least 2 completions"),
        ({"delta": 1.1}, [], "delta=1.1 must be a number greater than 1 + epsilon_high"),
        ({"not_a_field": 1}, [], "unknown recipe field(s): not_a_field"),
        ({"use_vllm": True, "vllm_tensor_parallel_size": 3}, ["--num_processes", "8"], "does not divide the 8"),
    ],
)
def test_impossible_configuration_exits_2_with_one_line(tmp_path, capsys, fields, argv, message):
    code, out, err = run_check(capsys, write_recipe(tmp_path, **fields), *argv)
    assert code == 2
    assert out == ""
    assert message in err and err.count("\n") == 1 and err.startswith("fipo-trl check: error: ")


def test_missing_recipe_exits_2(capsys):
    code, _, err = run_check(capsys, "configs/recipes/no-such-recipe.yaml")
    assert code == 2 and "recipe file not found" in err


def test_geometry_follows_trl_rules_for_n_processes():
    # generation_batch_size is split over per_device × N; steps_per_generation defaults to 8 × GA (FIPOConfig)
    geometry = resolve_geometry({**BASE, "generation_batch_size": 256}, num_processes=4)
    assert (geometry.steps_per_generation, geometry.completions_per_step) == (8, 32)
    default = resolve_geometry({**BASE, "gradient_accumulation_steps": 2}, num_processes=4)
    assert default.steps_per_generation == 16 and default.completions_per_generation == 512
    assert default.prompts_per_generation == 64 and default.steps_per_generation_batch == 8
    with pytest.raises(UsageError, match=r"per_device_train_batch_size, .* must be >= 1"):
        resolve_geometry({**BASE, "per_device_train_batch_size": 0}, num_processes=1)


@pytest.mark.parametrize(
    ("accumulation", "steps", "iterations", "expected"),
    [
        (1, 1, 1, (0, 1)),  # TRL default: on-policy
        (2, 2, 1, (0, 1)),  # both slices land before the first optimizer step (docs/trl.md §3)
        (1, 2, 1, (1, 2)),
        (2, 4, 1, (1, 2)),
        (1, 1, 2, (1, 2)),
        (3, 2, 1, (1, 2)),  # GA not a multiple of S: the 2nd block straddles the 1st optimizer boundary
        (8, 64, 1, (7, 8)),  # official 32B
    ],
)
def test_off_policy_steps_match_trls_old_logprobs(accumulation, steps, iterations, expected, tiny_model_dir, tmp_path):
    raw = {
        **BASE,
        "gradient_accumulation_steps": accumulation,
        "steps_per_generation": steps,
        "num_iterations": iterations,
        "num_generations": 2,
    }
    geometry = resolve_geometry(raw, num_processes=1)
    assert geometry.off_policy_steps == expected
    # A real trainer with this geometry: TRL computes old log-probs exactly when some step trains on stale data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FIPOConfig's on-policy warning
        args = FIPOConfig(
            output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=2,
            gradient_accumulation_steps=accumulation, steps_per_generation=steps, num_iterations=iterations,
            num_generations=2, max_completion_length=4,
        )  # fmt: skip
        trainer = FIPOTrainer(
            model=tiny_model_dir, reward_funcs=lambda completions, **kwargs: [float(len(c)) for c in completions],
            args=args, train_dataset=Dataset.from_dict({"prompt": ["1 + 1 ="] * 2}),
        )  # fmt: skip
    trainer.model.train()
    batch = trainer._generate_and_score_completions([{"prompt": "1 + 1 ="}] * 2)
    assert ("old_per_token_logps" in batch) == geometry.off_policy == (expected[0] > 0)


def test_parameter_count_matches_a_built_model(tiny_model_dir):
    shape, source = model_shape(tiny_model_dir)
    assert source.endswith("config.json")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert parameter_count(shape) == sum(p.numel() for p in model.parameters())


def test_parameter_count_of_known_qwen25_sizes():
    # Published sizes: Qwen2.5-0.5B 494,032,768 (tied embeddings), Qwen2.5-32B 32,763,876,352
    assert parameter_count(model_shape("Qwen/Qwen2.5-0.5B-Instruct")[0]) == 494_032_768
    assert parameter_count(model_shape("Qwen/Qwen2.5-32B")[0]) == 32_763_876_352
    assert model_shape("Qwen/Qwen2.5-Math-7B")[1] == "Qwen2.5-7B table"
    assert model_shape("meta-llama/Llama-3-8B") == (None, "unknown")


def test_memory_per_gpu_by_zero_stage():
    params, world = 1_000_000, 4
    assert memory_per_gpu(params, Sharding("ddp", 0), world) == 16 * params
    assert memory_per_gpu(params, Sharding("z1", 1), world) == (2 + 2 + 12 / 4) * params
    assert memory_per_gpu(params, Sharding("z2", 2), world) == (2 + 14 / 4) * params
    assert memory_per_gpu(params, Sharding("z3", 3), world) == 16 / 4 * params
    assert memory_per_gpu(params, Sharding("z3 offload", 3, True, True), world) == 2 / 4 * params


def test_unknown_model_prints_no_memory_estimate(tmp_path, capsys):
    recipe = write_recipe(tmp_path, model_name_or_path="someone/unknown-model")
    code, out, _ = run_check(capsys, recipe)
    assert code == 0 and "parameter count unknown" in out


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_load_with_accelerate(path):
    config = load_config_from_file(str(path))
    sharding = read_accelerate_config(path)
    assert config.num_processes == sharding.num_processes
    expected_stage = {"zero2.yaml": 2, "zero3.yaml": 3, "zero3_offload.yaml": 3, "fsdp2.yaml": 3}.get(path.name, 0)
    assert sharding.zero_stage == expected_stage
    assert sharding.offload_optimizer == sharding.offload_params == (path.name == "zero3_offload.yaml")


def test_deepspeed_json_is_accepted_by_accelerate():
    plugin = DeepSpeedPlugin(hf_ds_config="configs/accelerate/ds_zero3_offload.json")
    assert plugin.zero_stage == 3
    zero = json.loads(Path("configs/accelerate/ds_zero3_offload.json").read_text())["zero_optimization"]
    assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "cpu"


def test_cli_dispatches_check(capsys):
    assert cli_main(["check", "configs/recipes/fipo_qwen2.5_math_1.5b_1node.yaml", "--num_processes", "8"]) == 0
    assert "completions per optimizer step         128 " in capsys.readouterr().out


def test_bf16_weights_without_master_copy_are_flagged_only_outside_deepspeed(capsys):
    # lr 1e-6 on bf16 weights rounds away under DDP; DeepSpeed keeps fp32 master weights
    recipe, config = "configs/recipes/fipo_qwen2.5_math_1.5b_1node.yaml", "configs/accelerate/"
    code, out, _ = run_check(capsys, recipe, "--config_file", config + "multi_gpu.yaml")
    assert code == 0 and "warning: the weights stay bfloat16 under DDP (replicated)" in out
    code, out, _ = run_check(capsys, recipe, "--config_file", config + "multi_gpu.yaml", "--dtype", "float32")
    assert code == 0 and "no warnings" in out
    code, out, _ = run_check(capsys, recipe, "--config_file", config + "zero2.yaml")
    assert code == 0 and "no warnings" in out


def test_cli_override_is_judged_like_the_yaml(capsys):
    # A prompt-count batch size given on the command line is flagged as it would be in the recipe
    recipe = "configs/recipes/fipo_qwen2.5_math_1.5b_1node.yaml"
    code, out, err = run_check(capsys, recipe, "--num_processes", 8, "--generation_batch_size", 512)
    # the recipe already sets steps_per_generation: TRL refuses both, whichever of the two came from the command line
    assert code == 2 and out == ""
    both = "steps_per_generation and generation_batch_size are both set: TRL accepts only one of them"
    assert err == f"fipo-trl check: error: {both}\n"
    # on one process: at the recipe's own launch (8) these overrides outgrow its dynamic-sampling round
    code, out, _ = run_check(
        capsys, recipe, "--num_processes", 1, "--per_device_train_batch_size", 64, "--steps_per_generation", 8
    )
    assert code == 0 and "per_device_train_batch_size=64 looks like a count of prompts" in out


def test_accelerate_flag_names_and_no_other_spellings(capsys):
    # accelerate launch's --num_processes / --num_machines / --config_file, and nothing else
    recipe = "configs/recipes/fipo_qwen2.5_32b.yaml"
    code, out, _ = run_check(
        capsys, recipe, "--num_processes", 128, "--num_machines", 16, "--config_file", "configs/accelerate/zero3.yaml"
    )
    assert code == 0 and "128 training process(es) on 16 node(s) (8 per node), DeepSpeed ZeRO-3" in out
    usage = make_parser().format_help()
    assert "--num_processes" in usage and "--num_machines" in usage and "--config_file" in usage
    for flag in ("--num-processes", "--num-nodes", "--accelerate-config"):  # spellings of a pre-release version
        code, out, err = run_check(capsys, recipe, flag, 8)
        assert code == 2 and out == "" and err.count("\n") == 1, err


def test_tiny_model_size_and_wide_rows_line_up(capsys):
    # the quickstart's 792,320-parameter model is not "0.00B", and a value wider than the column keeps rows aligned
    code, out, _ = run_check(capsys, "configs/quickstart.yaml")
    assert code == 0 and "0.79M parameters" in out and re.search(r"weights \+ grads \+ AdamW states +12\.1 MiB", out)
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "this recipe" in line)
    column = lines[header].index("official 32B")
    for row in lines[header + 1 : header + 9]:  # every official value starts in the header's column
        assert row[column - 1] == " " and row[column] != " ", out
    assert "16 + prompts (no max_prompt_length) 22528" not in out  # the row that used to run into its neighbour


def test_dynamic_sampling_rows_show_the_official_rounds(capsys):
    # The 32B recipe turns the group filter on with the official numbers; check prints what they imply
    code, out, _ = run_check(
        capsys, "configs/recipes/fipo_qwen2.5_32b.yaml", "--num_processes", 128, "--num_machines", 16
    )
    assert code == 0
    assert re.search(r"prompts per round +2048 \(32768 completions\)", out)
    assert re.search(r"kept groups per generation batch +512 \(8192 completions\)", out)
    assert re.search(r"worst-case completions per optimizer step +40960 \(filter off: 1024\)", out)
    # an epoch is one pass of the dataloader (512 kept prompts per batch); the rounds generate 4 to 40 times as many
    assert re.search(r"one epoch \(num_train_epochs\) +one pass of the dataloader: dataset prompts / 512 ", out)
    assert re.search(r"prompts generated per epoch +4× to 40× the dataset", out)


def test_dynamic_sampling_round_that_cannot_be_split_exits_2(tmp_path, capsys):
    recipe = write_recipe(tmp_path, dynamic_sampling=True, num_generations=8, dynamic_sampling_prompts_per_round=3)
    code, out, err = run_check(capsys, recipe, "--num_processes", 2)
    assert code == 2 and out == ""
    assert "dynamic_sampling_prompts_per_round" in err and len(err.strip().splitlines()) == 1
