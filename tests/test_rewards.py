r"""Rewards: every rule of docs/scorer.md, the math-verify pool's time bounds, and odd inputs."""

import multiprocessing
import pickle
import subprocess
import sys
import threading

import pytest

from fipo_trl.rewards import (
    dapo_accuracy_reward,
    dapo_reward_funcs,
    extract_boxed_answer,
    extract_dapo_answer,
    get_math_verify_reward,
    math_verify_reward,
    normalize_final_answer,
)


EXPLODING = r"so \boxed{2^{2^{2^{2^{2^{2}}}}}}"  # sympy evaluates this tower for minutes
ODD_COMPLETIONS = [
    "",
    None,
    42,
    b"Answer: 42",
    "Answer: " + "9" * (1 << 20),
    "x" * (1 << 20) + "\nAnswer: 42",
    r"Answer: \boxed{{{42",
    r"Answer: \frac{}{}{} \boxed{\frac{}{}{}}",
    "Answer: \x00\xff\ud800\U0010ffff \\boxed{\x00}",
    [{"role": "assistant", "content": None}],
    [{"role": "user", "content": "Answer: 42"}],
    [],
    {"content": "Answer: 42"},
]


# ---- step 1: only the last 300 characters are read --------------------------------------------------------------


def test_scorer_reads_only_last_300_characters():
    # an answer line that starts 301 characters before the end is out of reach; 300 is in reach
    assert extract_dapo_answer("Answer: 7" + "\n" + "x" * 291) == "[INVALID]"
    assert extract_dapo_answer("Answer: 7" + "\n" + "x" * 290) == "7"


def test_scorer_truncation_can_cut_the_answer_line():
    # the 300-character window starts inside "Answer: 123", so only its tail is seen
    assert extract_dapo_answer("Answer: 123" + "\n" * 292) == "[INVALID]"


# ---- step 2: the last "answer : rest-of-line" match -------------------------------------------------------------


def test_answer_word_is_case_insensitive():
    # "ANSWER", "answer" and "Final answer" all count
    assert extract_dapo_answer("ANSWER: 7") == extract_dapo_answer("Final answer: 7") == "7"


def test_whitespace_around_colon_allowed():
    # spaces before and after the colon are skipped
    assert extract_dapo_answer("Answer \t:   7") == "7"


def test_whitespace_after_colon_may_span_a_newline():
    # optional whitespace is any whitespace, so the answer may sit on the next line
    assert extract_dapo_answer("Answer:\n7") == "7"


def test_last_match_wins():
    # an earlier answer line is overridden by the last one
    assert extract_dapo_answer("Answer: 3\nwait\nAnswer: 7") == "7"


def test_capture_stops_at_end_of_line():
    # text on the following lines is not part of the answer
    assert extract_dapo_answer("Answer: 7\nI am confident.") == "7"


def test_matches_do_not_overlap():
    # a second "Answer:" inside the captured line is part of the first match, not a match of its own
    assert extract_dapo_answer("Answer: Answer: 7") == "Answer:7"


def test_no_answer_line_is_invalid_and_scores_minus_one():
    # the [INVALID] marker never equals a real answer
    assert extract_dapo_answer("The answer is 7.") == "[INVALID]"
    assert dapo_accuracy_reward(["The answer is 7."], solution=["7"]) == [-1.0]


# ---- steps 3 and 4: same normalisation for the ground truth, then string equality --------------------------------


def test_ground_truth_is_normalised_too():
    # "$7$" and "7 dollars" normalise to "7" like the prediction
    assert dapo_accuracy_reward(["Answer: 7", "Answer: 7"], solution=["$7$", "7 dollars"]) == [1.0, 1.0]


def test_no_numeric_equivalence():
    # 0.5 vs \frac{1}{2} and 42. vs 42 are different strings, hence wrong
    completions = [r"Answer: \frac{1}{2}", "Answer: 42.", "Answer: 42"]
    assert dapo_accuracy_reward(completions, solution=["0.5", "42", "42"]) == [-1.0, -1.0, 1.0]


def test_dollar_wrapped_trailing_period_is_dropped():
    # quirk: "$42$." keeps only the $-delimited part, so it is correct while "42." is not
    assert dapo_accuracy_reward(["Answer: $42$."], solution=["42"]) == [1.0]


# ---- normalisation (a): the last "=" ------------------------------------------------------------------------------


def test_keeps_text_after_last_equals_sign():
    # "x = y = 3" keeps "3"
    assert normalize_final_answer("x = y = 3") == "3"


# ---- normalisation (b): substitutions, in order -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("pizzan slices", "pizzslices"),  # "an " vanishes, inside words too
        ("pizza slices", "pizzslices"),  # "a " vanishes, inside words too
        ("$5.$", "5"),  # ".$" -> "$"
        ("\\$5", "5"),  # "\$" vanishes
        ("5\\ cm", "5"),  # "\ " vanishes (else "5\cm" -> "5\")
        ("1 000 000", "1000000"),  # spaces vanish
        ("\\mbox{5}", "5"),  # mbox -> text, then \text{} is unwrapped
        ("x,\\text{and}y", "x,y"),  # ",\text{and}" -> ","
        ("x\\text{and}y", "x,y"),  # "\text{and}" -> ","
        ("5\\text{m}", "5"),  # "\text{m}" -> "\text{}", then deleted
    ],
)
def test_substitutions(raw, expected):
    # each substitution of step (b); removing any one changes the result
    assert normalize_final_answer(raw) == expected


# ---- normalisation (c): deleted strings, in order -----------------------------------------------------------------


@pytest.mark.parametrize(
    "removed",
    [
        "square",
        "ways",
        "integers",
        "dollars",
        "mph",
        "inches",
        "hours",
        "km",
        "units",
        "\\ldots",
        "sue",
        "points",
        "feet",
        "minutes",
        "digits",
        "cents",
        "degrees",
        "cm",
        "gm",
        "pounds",
        "meters",
        "meals",
        "edges",
        "students",
        "childrentickets",
        "multiples",
        "\\text{s}",
        "\\text{.}",
        "\\text{\ns}",
        "\\text{}^2",
        "\\text{}^3",
        "\\text{\n}",
        "\\mathrm{th}",
        "^\\circ",
        "^{\\circ}",
        "\\;",
        ",\\!",
        '"',
        "\\dots",
    ],
)
def test_removed_expressions(removed):
    # each unit word or LaTeX fragment of step (c) disappears
    assert normalize_final_answer(f"5{removed}") == "5"


def test_removed_braced_comma():
    # "{,}" thousands separators vanish
    assert normalize_final_answer("1{,}000") == "1000"


def test_empty_text_is_removed_before_later_expressions():
    # deleting "\text{}" early lets "^\circ" form and be deleted later in the list
    assert normalize_final_answer("5^\\text{}\\circ") == "5"


# ---- normalisation (d): regular-expression rewrites ----------------------------------------------------------------


def test_keeps_first_dollar_part_only():
    # text around the first $...$ pair is dropped, later pairs too
    assert normalize_final_answer("x$5$,$6$") == "5"


def test_text_is_unwrapped_non_greedily_everywhere():
    # every \text{X} becomes X, each X ending at its first "}"
    assert normalize_final_answer("\\text{ab}\\text{c}d}") == "abcd}"


def test_textbf_and_overline_are_unwrapped():
    # \textbf{X} -> X and \overline{X} -> X
    assert normalize_final_answer("\\textbf{7}") == "7"
    assert normalize_final_answer("0.\\overline{3}") == "0.3"


def test_boxed_is_unwrapped_greedily():
    # X runs to the last "}", so nested braces survive
    assert normalize_final_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"


def test_shorthand_fraction():
    # \frac12 -> \frac{1}{2} and \fracab -> \frac{a}{b}; a braced fraction is left alone
    assert normalize_final_answer("\\frac12") == "\\frac{1}{2}"
    assert normalize_final_answer("\\fracab") == "\\frac{a}{b}"
    assert normalize_final_answer("\\frac{1}{2}") == "\\frac{1}{2}"


def test_shorthand_root():
    # \sqrt2 -> \sqrt{2}; a braced root is left alone
    assert normalize_final_answer("\\sqrt2") == "\\sqrt{2}"
    assert normalize_final_answer("\\sqrt{2}") == "\\sqrt{2}"


# ---- normalisation (e), (f), (g) -----------------------------------------------------------------------------------


def test_lone_dollar_removed():
    # a "$" without a partner is removed by step (e)
    assert normalize_final_answer("5$") == "5"


def test_commas_removed_from_plain_integers_only():
    # "4,200" -> "4200", and quirk: "1,2,3" -> "123"; non-digit lists keep their commas
    assert normalize_final_answer("4,200") == "4200"
    assert normalize_final_answer("1,2,3") == "123"
    assert normalize_final_answer("1.5,2") == "1.5,2"
    assert normalize_final_answer("x,y") == "x,y"


def test_surrounding_whitespace_stripped():
    # tabs and newlines survive the space removal but not the final strip
    assert normalize_final_answer("\t5\n") == "5"


def test_documented_quirk_example():
    # docs/scorer.md: "pizza slices" -> "pizzslices", so the quirk applies to both sides alike
    assert dapo_accuracy_reward(["Answer: 12 pizza slices"], solution=["12 pizza slices"]) == [1.0]


# ---- dapo_accuracy_reward as a TRL reward --------------------------------------------------------------------------


def test_dapo_reward_scores_chat_completions_last_assistant_message():
    # tool turns and earlier assistant turns are ignored
    completion = [
        {"role": "assistant", "content": "Answer: 1"},
        {"role": "tool", "content": "Answer: 3"},
        {"role": "assistant", "content": "Answer: 2"},
    ]
    assert dapo_accuracy_reward([completion, completion], solution=["2", "1"]) == [1.0, -1.0]


def test_dapo_reward_reads_content_parts():
    # multimodal-style content (a list of text parts) is joined
    parts = [{"type": "text", "text": "Answer:"}, {"type": "text", "text": "4"}]
    completion = [{"role": "assistant", "content": parts}]
    assert dapo_accuracy_reward([completion], solution=["4"]) == [1.0]


def test_dapo_reward_odd_inputs_score_minus_one():
    # empty, None, non-strings, 1 MB, unbalanced braces, junk bytes: a defined -1.0 each, never an error
    rewards = dapo_accuracy_reward(ODD_COMPLETIONS, solution=["41"] * len(ODD_COMPLETIONS))
    assert rewards == [-1.0] * len(ODD_COMPLETIONS)


def test_dapo_reward_solution_types():
    # None skips the row (TRL turns it into NaN); ints and integral floats compare as integers
    rewards = dapo_accuracy_reward(["Answer: 42"] * 3, solution=[None, 42, 42.0])
    assert rewards == [None, 1.0, 1.0]


def test_dapo_reward_logs_extracted_answers():
    # the completions table gets a dapo_answer column
    logged = {}
    dapo_accuracy_reward(["Answer: 42", "nothing"], solution=["42", "1"], log_extra=logged.__setitem__)
    assert logged == {"dapo_answer": ["42", "[INVALID]"]}


def test_dapo_reward_funcs_official_lengths():
    # accuracy + TRL's own overlong punishment: 0 up to 16384 tokens, -0.5 at 18432, -1 at 20480
    accuracy, overlong = dapo_reward_funcs()
    assert accuracy is dapo_accuracy_reward
    assert type(overlong).__module__ == "trl.rewards.other_rewards"
    assert overlong(completion_ids=[[0] * 16384, [0] * 18432, [0] * 20480]) == [0.0, -0.5, -1.0]


def test_dapo_reward_funcs_custom_lengths():
    # the 7B recipe: 10240 max, 2048 buffer
    _, overlong = dapo_reward_funcs(max_completion_len=10240, soft_punish_cache=2048)
    assert overlong(completion_ids=[[0] * 8192, [0] * 9216]) == [0.0, -0.5]


def test_reward_names_read_well_in_logs():
    # TRL logs rewards/<__name__>/mean
    names = [func.__name__ for func in [*dapo_reward_funcs(), math_verify_reward]]
    assert names == ["dapo_accuracy_reward", "soft_overlong_punishment_reward", "math_verify_reward"]


# ---- extract_boxed_answer ------------------------------------------------------------------------------------------


def test_boxed_last_and_brace_balanced():
    # the last \boxed{} wins and keeps its nested braces
    assert extract_boxed_answer(r"\boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"


def test_boxed_unbalanced_falls_back_to_earlier_complete_box():
    # an unclosed last box is skipped for the complete one before it; none complete gives None
    assert extract_boxed_answer(r"\boxed{3} and \boxed{4") == "3"
    assert extract_boxed_answer(r"\boxed{{4}") is None
    assert extract_boxed_answer("no box") is None


def test_boxed_many_unclosed_boxes_is_linear():
    # 1 MB of unclosed boxes: each is scanned only up to the next one (this would take hours if quadratic)
    assert extract_boxed_answer("\\boxed{" * 150_000) is None


# ---- math_verify_reward --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verifier():
    reward = get_math_verify_reward(timeout_s=1.0, num_workers=2)
    yield reward
    reward.close()


def test_math_verify_equivalence(verifier):
    # symbolic equivalence in \boxed{}: 0.5 == 1/2 == 2/4; a wrong or missing box scores 0
    completions = [r"\boxed{0.5}", r"$\boxed{\frac{2}{4}}$", r"\boxed{\frac{1}{3}}", "Answer: 0.5"]
    assert verifier(completions, solution=[r"\frac{1}{2}"] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_math_verify_chat_completions_and_unusable_solutions(verifier):
    # chat completions are read; an unparseable or missing ground truth gives None
    completion = [{"role": "assistant", "content": r"\boxed{\sqrt{3}/2}"}]
    assert verifier([completion] * 3, solution=[r"\frac{\sqrt{3}}{2}", "", None]) == [1.0, None, None]


def test_math_verify_timeout_is_bounded_scored_and_counted(verifier):
    # an exploding expression scores 0.0 and is counted; its neighbour is still verified
    metrics = []
    before = verifier.num_timeouts
    rewards = verifier([EXPLODING, r"\boxed{7}"], solution=["3", "7"], log_metric=lambda *m: metrics.append(m))
    assert rewards == [0.0, 1.0]
    assert metrics == [("math_verify_reward/timeouts", 1)]
    assert verifier.num_timeouts == before + 1


def test_math_verify_from_a_thread(verifier):
    # off the main thread math-verify's signal timeouts are off; the pool still bounds the check
    out = []
    thread = threading.Thread(target=lambda: out.append(verifier([EXPLODING, r"\boxed{7}"], solution=["3", "7"])))
    thread.start()
    thread.join(timeout=30)
    assert out == [[0.0, 1.0]]


def _score_in_daemon(reward, connection):
    connection.send(reward([EXPLODING, r"\boxed{7}"], solution=["3", "7"]))


def test_math_verify_in_a_forked_daemon_process(verifier):
    # a dataloader-like daemon child that inherited the pool and its lock starts its own workers, still bounded
    verifier([r"\boxed{1}"], solution=["1"])
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_score_in_daemon, args=(verifier, sender), daemon=True)
    with verifier._lock:  # forked while another thread is mid-call: the child must not inherit the held lock
        child.start()
    assert receiver.poll(60) and receiver.recv() == [0.0, 1.0]
    child.join(10)
    assert verifier([r"\boxed{2}"], solution=["2"]) == [1.0]  # the parent's own pool is untouched


def test_math_verify_odd_inputs_never_crash(verifier):
    # every odd input gets a defined score; nothing raises or hangs
    rewards = verifier(ODD_COMPLETIONS, solution=["41"] * len(ODD_COMPLETIONS))
    assert rewards == [0.0] * len(ODD_COMPLETIONS)


def test_math_verify_replaces_a_dead_worker(verifier):
    # workers killed from outside, idle or still starting, are replaced and the checks retried
    verifier([EXPLODING], solution=["1"])  # leaves one worker starting
    for worker in verifier._pool.workers:
        worker.process.kill()
        worker.process.wait()
    assert verifier([r"\boxed{5}", r"\boxed{6}"], solution=["5", "7"]) == [1.0, 0.0]


def test_math_verify_reward_pickles(verifier):
    # TRL's async rollout worker pickles reward functions; the copy starts its own pool
    verifier([r"\boxed{1}"], solution=["1"])
    copy = pickle.loads(pickle.dumps(verifier))
    try:
        assert (copy.timeout_s, copy.num_workers, copy.__name__) == (1.0, 2, "math_verify_reward")
        assert copy([r"\boxed{9}"], solution=["9"]) == [1.0]
    finally:
        copy.close()


def test_math_verify_worker_that_cannot_start_raises(monkeypatch):
    # a broken worker environment is an error, not an endless respawn
    monkeypatch.setattr("fipo_trl.rewards.math_verify_pool._WORKER_BOOT", "raise SystemExit(3)")
    reward = get_math_verify_reward(timeout_s=1.0, num_workers=1)
    with pytest.raises(RuntimeError, match="failed to start"):
        reward([r"\boxed{1}"], solution=["1"])
    reward.close()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own gradient-checkpointing renames
def test_rewards_plug_into_a_trl_trainer(tiny_model_dir, tmp_path, verifier):
    # one GRPOTrainer step with the official reward list plus math-verify: readable names and the timeout metric
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    prompts = [[{"role": "user", "content": "What is 1+1?"}], [{"role": "user", "content": "What is 2+2?"}]]
    dataset = Dataset.from_dict({"prompt": prompts, "solution": ["2", "4"]})
    args = GRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", save_strategy="no", max_steps=1,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, logging_steps=1,
    )  # fmt: skip
    reward_funcs = [*dapo_reward_funcs(max_completion_len=8, soft_punish_cache=4), verifier]
    trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=reward_funcs, args=args, train_dataset=dataset)
    trainer.train()
    logs = trainer.state.log_history[0]
    for name in ["dapo_accuracy_reward", "soft_overlong_punishment_reward", "math_verify_reward"]:
        assert f"rewards/{name}/mean" in logs
    assert logs["math_verify_reward/timeouts"] == 0.0


def test_importing_the_rewards_starts_no_pool_and_imports_no_trl():
    # the math-verify pool (module, processes, exit and fork hooks) comes with the first math_verify_reward call
    code = (
        "import sys, fipo_trl.rewards as r; "
        "print(r.math_verify_reward._pool, r.math_verify_reward._hooks_registered, "
        "'fipo_trl.rewards.math_verify_pool' in sys.modules, 'trl' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["None", "False", "False", "False"]
