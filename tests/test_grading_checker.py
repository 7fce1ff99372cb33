"""Tests for the worker pool: deadlines, recovery after a kill, counts and input checks."""

import os
from collections import Counter

import pytest

from sphere_jax.grading import AnswerChecker, Verdict, check_equal
from sphere_jax.grading.checker import decide_in_parent

# sympy 1.14 runs trial division to simplify this root; it did not finish within 20 s on a
# 2-core CPU (measured, then stopped).
SYMPY_HANG = (r"\sqrt{10^{100000}+1}", "5")


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(workers=2, deadline_s=1.0) as pool:
        yield pool


def test_sympy_hang_times_out(checker):
    verdicts = checker.check_many([SYMPY_HANG, ("2/3", r"\frac{2}{3}"), (r"\sqrt{8}", r"2\sqrt{2}")])
    assert verdicts[0] == Verdict(False, "timed_out")
    assert verdicts[1] == Verdict(True, "equal")
    assert verdicts[2] == Verdict(True, "equal")


def test_killed_worker_is_replaced():
    # Without the in-worker alarm, only the parent's kill can end the hanging check.
    with AnswerChecker(workers=2, deadline_s=1.0, interrupt_in_worker=False) as pool:
        pool.check("1", "1.0")
        pids_before = set(pool.worker_pids)
        verdicts = pool.check_many([SYMPY_HANG, ("x+1", "1+x")])
        assert verdicts == [Verdict(False, "timed_out"), Verdict(True, "equal")]
        assert pool.workers_restarted == 1
        pids_after = set(pool.worker_pids)
        assert len(pids_after) == 2
        assert len(pids_after - pids_before) == 1
        # The pool keeps working after the kill.
        after = pool.check_many([(r"\sqrt{1/n}", r"\frac{1}{\sqrt{n}}"), ("x<3", "x>3"), ("3 > x", "x < 3")])
        assert after == [Verdict(True, "equal"), Verdict(False, "not_equal"), Verdict(True, "equal")]
        assert pool.counts["timed_out"] == 1


def test_soft_timeout_keeps_worker(checker):
    pids_before = set(checker.worker_pids)
    restarted_before = checker.workers_restarted
    assert checker.check_many([SYMPY_HANG]) == [Verdict(False, "timed_out")]
    assert checker.workers_restarted == restarted_before
    assert set(checker.worker_pids) == pids_before


def test_hangs_in_one_batch(checker):
    pairs = [SYMPY_HANG, SYMPY_HANG, SYMPY_HANG] + [(f"{k}+x", f"x+{k}") for k in range(5)] + [("x^2", "x*x")]
    verdicts = checker.check_many(pairs)
    assert [verdict.reason for verdict in verdicts[:3]] == ["timed_out"] * 3
    assert all(verdict.equal for verdict in verdicts[3:])


def test_counts_accumulate(checker):
    before = Counter(checker.counts)
    checker.check_many([("1", "1"), ("1", "2"), ("1", "???"), (r"\frac{\sqrt2}{2}", r"\frac{1}{\sqrt2}")])
    difference = Counter(checker.counts)
    difference.subtract(before)
    assert +difference == Counter({"equal": 2, "not_equal": 1, "unparsable": 1})


def test_cheap_cases_skip_workers(checker):
    before = checker.decided_in_parent
    checker.check_many([("#### 1,000", r"\boxed{1000}"), ("0.5", r"\frac{1}{2}"), ("x", "x"), (r"\sqrt{2}", "1.4142")])
    assert checker.decided_in_parent == before + 3


def test_decide_in_parent_cases():
    assert decide_in_parent("$18", "18", 1e-6) == Verdict(True, "equal")
    assert decide_in_parent("#### 7", "8", 1e-6) == Verdict(False, "not_equal")
    assert decide_in_parent("5", "", 1e-6) == Verdict(False, "unparsable")
    assert decide_in_parent(r"\sqrt{2}", "1.41", 1e-6) is None


def test_batch_deadline(checker):
    verdicts = checker.check_many([SYMPY_HANG, SYMPY_HANG, ("1", "1")], batch_deadline_s=0.3)
    assert verdicts[0] == Verdict(False, "timed_out")
    assert verdicts[1] == Verdict(False, "timed_out")
    assert verdicts[2] == Verdict(True, "equal")
    assert checker.check_many([("x+1", "1+x")]) == [Verdict(True, "equal")]


def test_probe_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with AnswerChecker(workers=1, deadline_s=2.0) as pool:
        verdict = pool.check("__import__('os').system('touch checker_probe')", "0")
    assert verdict == Verdict(False, "unparsable")
    assert not (tmp_path / "checker_probe").exists()


def test_invalid_pairs_raise(checker):
    with pytest.raises(TypeError, match="pair 1"):
        checker.check_many([("1", "1"), ("1", 1)])
    with pytest.raises(TypeError, match="pair 0"):
        checker.check_many([("1", "1", "1")])


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="workers"):
        AnswerChecker(workers=0)
    with pytest.raises(ValueError, match="deadline_s"):
        AnswerChecker(deadline_s=0)
    with pytest.raises(ValueError, match="rel_tol"):
        AnswerChecker(rel_tol=-1.0)
    with pytest.raises(ValueError, match="rel_tol"):
        check_equal("1", "1", rel_tol=float("nan"))
    with pytest.raises(TypeError, match="strings"):
        check_equal("1", None)


def test_closed_checker_raises():
    pool = AnswerChecker(workers=1)
    pids = pool.worker_pids
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.check("1", "1")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_verdict_validates_reason():
    with pytest.raises(ValueError, match="invalid verdict reason"):
        Verdict(False, "maybe")
    with pytest.raises(ValueError, match="cannot have equal"):
        Verdict(True, "not_equal")


def test_rel_tol_setting():
    assert check_equal("1", "1.001", rel_tol=1e-2).equal
    assert not check_equal("1", "1.001").equal
    # Exact values ignore the tolerance.
    assert not check_equal(r"\frac{1000}{1001}", "1", rel_tol=1e-2).equal
