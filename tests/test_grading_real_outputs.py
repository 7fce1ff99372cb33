"""Real sampler outputs where sphere_jax's checker and math-verify disagreed, with the reviewed verdict.

tests/data/real_output_cases.jsonl contains one JSON object a line: the model's whole output, the gold
answer, the model and benchmark it came from, the answer our extraction must find (null when the
output has none), and the verdict a reviewer judged right, with the reason. A case with
"fallback": "last_number" is one whose right verdict needs that fallback: the output states its
answer only in prose, so strict extraction (the default) reports it unparsable. "finished" is
false for an output cut at the token limit; the fallback never reads those. These come from
`scripts/compare_math_verify.py --pairs` runs on real greedy outputs of the packaged models.
"""

import json
from pathlib import Path

import pytest

from sphere_jax.grading import AnswerChecker
from sphere_jax.grading.extract import extract_answer_or_fallback

CASES_PATH = Path(__file__).parent / "data" / "real_output_cases.jsonl"
CASES = [json.loads(line) for line in CASES_PATH.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(workers=1, deadline_s=2.0) as opened:
        yield opened


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda index: CASES[index]["source"])
def test_real_output_case(index, checker):
    case = CASES[index]
    answer = extract_answer_or_fallback(case["output"], case.get("fallback", "none"), finished=case["finished"])
    assert answer == case["answer"], case["note"]
    if answer is None:
        assert case["reason"] == "unparsable"
        return
    verdict = checker.check(case["gold"], answer)
    assert verdict.equal == case["expected"], case["note"]
    assert verdict.reason == case["reason"], case["note"]


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda index: CASES[index]["source"])
def test_real_output_case_with_fallback(index, checker):
    # With the last_number fallback on, every case keeps its right verdict: outputs cut at the
    # token limit stay unparsable, and finished outputs without a right last number stay wrong.
    case = CASES[index]
    answer = extract_answer_or_fallback(case["output"], "last_number", finished=case["finished"])
    equal = checker.check(case["gold"], answer).equal if answer is not None else False
    assert equal == case["expected"], case["note"]
