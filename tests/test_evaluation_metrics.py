"""Pass@k, Wilson and normal intervals, majority voting and per-problem scoring."""

from __future__ import annotations

import math

import pytest

from sphere_jax.data import Problem
from sphere_jax.evaluation.metrics import majority_vote, mean_interval, pass_at_k, wilson_interval
from sphere_jax.evaluation.scoring import metric_summary, score_problem, summarize
from sphere_jax.grading.verdict import EQUAL, NOT_EQUAL, UNPARSABLE


@pytest.mark.parametrize("n", [1, 2, 5, 10, 16])
def test_pass_at_k_matches_binomial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_one_is_fraction_correct():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0


def test_pass_at_k_large_n_is_finite():
    value = pass_at_k(200, 1, 100)
    assert value == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [(4, 5, 1, r"0 <= c <= n"), (4, -1, 1, r"0 <= c <= n"), (4, 2, 5, r"pass@5 needs 1 <= k <= n"), (4, 2, 0, r"pass@0")],
)
def test_pass_at_k_invalid(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    ("successes", "total", "low", "high"),
    [
        (5, 10, 0.236593, 0.763407),
        (0, 10, 0.0, 0.277533),
        (10, 10, 0.722467, 1.0),
    ],
)
def test_wilson_interval_known_values(successes, total, low, high):
    lower, upper = wilson_interval(successes, total)
    assert lower == pytest.approx(low, abs=1e-5)
    assert upper == pytest.approx(high, abs=1e-5)


@pytest.mark.parametrize(("successes", "total"), [(81, 100), (1, 3), (700, 1319), (2, 500)])
def test_wilson_interval_matches_scipy(successes, total):
    from scipy.stats import binomtest

    reference = binomtest(successes, total).proportion_ci(confidence_level=0.95, method="wilson")
    lower, upper = wilson_interval(successes, total)
    assert lower == pytest.approx(reference.low, abs=1e-9)
    assert upper == pytest.approx(reference.high, abs=1e-9)


def test_wilson_interval_invalid():
    with pytest.raises(ValueError, match=r"at least one trial, got total=0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"0 <= successes <= total, got 11 of 10"):
        wilson_interval(11, 10)


def test_mean_interval():
    low, high = mean_interval([0.25, 0.75, 0.5, 0.5])
    standard_error = math.sqrt(((0.25**2) + (0.25**2)) / 3) / 2
    assert low == pytest.approx(0.5 - 1.959964 * standard_error, abs=1e-6)
    assert high == pytest.approx(0.5 + 1.959964 * standard_error, abs=1e-6)
    assert mean_interval([0.4]) == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"at least one value"):
        mean_interval([])


@pytest.mark.parametrize(
    ("answers", "winner"),
    [
        (["3", "4", "4", "3", "4"], 1),
        (["1/2", "1 / 2", "0.5"], 0),
        (["7", "8"], 0),  # tie goes to the first answer seen
        ([None, "8", None], 1),
        ([None, None], None),
        ([], None),
    ],
)
def test_majority_vote(answers, winner):
    assert majority_vote(answers) == winner


def make_problem(level=None, subject=None, problem_id="toy:test:0"):
    return Problem(id=problem_id, question="q", answer="4", source="toy", split="test", level=level, subject=subject)


def test_score_problem_pass_and_majority():
    answers = ["4", "5", "5", "4"]
    verdicts = [EQUAL, NOT_EQUAL, NOT_EQUAL, EQUAL]
    score = score_problem(make_problem(), answers, verdicts, ks=(1, 2, 4))
    assert score.num_correct == 2
    assert score.metrics["pass@1"] == pytest.approx(0.5)
    assert score.metrics["pass@2"] == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))
    assert score.metrics["pass@4"] == 1.0
    assert score.metrics["maj@1"] == 1.0  # first sample alone: "4", correct
    assert score.metrics["maj@2"] == 1.0  # "4" and "5" tie; the first seen wins
    assert score.metrics["maj@4"] == 1.0  # "4" and "5" tie again
    assert score.majority_answer == "4"


def test_majority_wrong_when_wrong_answer_dominates():
    answers = ["5", "5", "4", None]
    verdicts = [NOT_EQUAL, NOT_EQUAL, EQUAL, UNPARSABLE]
    score = score_problem(make_problem(), answers, verdicts, ks=(4,))
    assert score.metrics["maj@4"] == 0.0
    assert score.metrics["pass@4"] == 1.0
    assert score.reasons == ("not_equal", "not_equal", "equal", "unparsable")


def test_metric_summary_methods():
    binary = metric_summary([1.0, 0.0, 1.0, 1.0])
    assert binary["ci_method"] == "wilson"
    assert binary["value"] == pytest.approx(0.75)
    assert (binary["ci_low"], binary["ci_high"]) == pytest.approx(wilson_interval(3, 4))
    fractional = metric_summary([0.5, 0.25, 1.0])
    assert fractional["ci_method"] == "normal"
    assert metric_summary([])["value"] is None


def test_summarize_groups_and_verdicts():
    scores = [
        score_problem(make_problem(5, "Algebra", "a"), ["4"], [EQUAL], ks=(1,), majority=False),
        score_problem(make_problem(5, "Geometry", "b"), ["3"], [NOT_EQUAL], ks=(1,), majority=False),
        score_problem(make_problem(3, "Algebra", "c"), [None], [UNPARSABLE], ks=(1,), majority=False),
        score_problem(make_problem(None, None, "d"), ["4"], [EQUAL], ks=(1,), majority=False),
    ]
    summary = summarize(scores, "greedy", (1,))
    assert summary["num_problems"] == 4
    assert summary["accuracy"]["metric"] == "pass@1"
    assert summary["accuracy"]["value"] == pytest.approx(0.5)
    assert summary["accuracy"]["ci_method"] == "wilson"
    assert list(summary["metrics"]) == ["pass@1"]
    assert summary["verdicts"] == {"equal": 2, "not_equal": 1, "unparsable": 1, "timed_out": 0}
    assert list(summary["by_level"]) == ["3", "5"]
    assert summary["by_level"]["5"]["pass@1"]["value"] == pytest.approx(0.5)
    assert summary["by_level"]["5"]["pass@1"]["problems"] == 2
    assert summary["by_subject"]["Algebra"]["pass@1"]["value"] == pytest.approx(0.5)
