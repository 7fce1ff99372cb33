"""Per-problem scores and their aggregation into benchmark metrics with confidence intervals."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from sphere_jax.data.problem import Problem
from sphere_jax.evaluation.metrics import majority_vote, mean_interval, pass_at_k, wilson_interval
from sphere_jax.grading import Verdict
from sphere_jax.grading.verdict import REASONS

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class ProblemScore:
    """The scores of one problem.

    Attributes:
        problem: The problem.
        num_samples: Completions drawn.
        num_correct: Completions whose answer the checker judged equal to the gold answer.
        metrics: ``"pass@k"`` estimates and ``"maj@k"`` results (0.0 or 1.0) by name.
        majority_answer: Most frequent extracted answer over all samples, or None.
        reasons: Verdict reason of each sample.
    """

    problem: Problem
    num_samples: int
    num_correct: int
    metrics: dict[str, float]
    majority_answer: str | None
    reasons: tuple[str, ...]


def score_problem(
    problem: Problem,
    answers: Sequence[str | None],
    verdicts: Sequence[Verdict],
    ks: Sequence[int],
    *,
    majority: bool = True,
) -> ProblemScore:
    """Score one problem's samples.

    pass@k uses all ``len(answers)`` samples through the unbiased estimator. maj@k votes over the
    first k samples (see ``majority_vote``) and counts 1.0 when the winning sample is correct.

    Args:
        problem: The problem.
        answers: Extracted answer of each sample, None where none was found.
        verdicts: Checker verdict of each sample.
        ks: The k values.
        majority: Whether to compute maj@k.
    """
    num_samples = len(answers)
    num_correct = sum(verdict.equal for verdict in verdicts)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"pass@{k}"] = pass_at_k(num_samples, num_correct, k)
    if majority:
        for k in ks:
            winner = majority_vote(answers[:k])
            metrics[f"maj@{k}"] = 1.0 if winner is not None and verdicts[winner].equal else 0.0
    overall_winner = majority_vote(answers)
    return ProblemScore(
        problem=problem,
        num_samples=num_samples,
        num_correct=num_correct,
        metrics=metrics,
        majority_answer=answers[overall_winner] if overall_winner is not None else None,
        reasons=tuple(verdict.reason for verdict in verdicts),
    )


def metric_summary(values: Sequence[float]) -> dict[str, Any]:
    """Return the mean of per-problem values with its 95% interval and the interval's method.

    Values that are all 0 or 1 (greedy pass@1, maj@k) get the Wilson score interval. Other
    values (pass@k estimated from several samples) get the normal-approximation interval of the mean.
    """
    if not values:
        return {"value": None, "ci_low": None, "ci_high": None, "ci_method": None, "problems": 0}
    if all(value in (0.0, 1.0) for value in values):
        low, high = wilson_interval(int(sum(values)), len(values))
        method = "wilson"
    else:
        low, high = mean_interval(values)
        method = "normal"
    return {
        "value": sum(values) / len(values),
        "ci_low": low,
        "ci_high": high,
        "ci_method": method,
        "problems": len(values),
    }


def summarize(scores: Sequence[ProblemScore], mode: str, ks: Sequence[int]) -> dict[str, Any]:
    """Aggregate problem scores into the metrics part of a benchmark report.

    Returns:
        A dict with ``num_problems``, ``confidence``, ``metrics`` (each with value and interval),
        ``accuracy`` (the pass@1 entry), ``by_level``, ``by_subject`` and ``verdicts`` (count of
        each verdict reason over all samples, zeros included).
    """
    names = [f"pass@{k}" for k in ks]
    if mode == "sample":
        names += [f"maj@{k}" for k in ks]
    metrics = _metrics(scores, names)
    accuracy_name = "pass@1" if "pass@1" in metrics else names[0]
    verdict_counts = collections.Counter(reason for score in scores for reason in score.reasons)
    return {
        "num_problems": len(scores),
        "confidence": CONFIDENCE,
        "accuracy": {"metric": accuracy_name, **metrics[accuracy_name]},
        "metrics": metrics,
        "by_level": _grouped(scores, names, lambda score: score.problem.level),
        "by_subject": _grouped(scores, names, lambda score: score.problem.subject),
        "verdicts": {reason: verdict_counts.get(reason, 0) for reason in REASONS},
    }


def _metrics(scores: Sequence[ProblemScore], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {name: metric_summary([score.metrics[name] for score in scores]) for name in names}


def _grouped(
    scores: Sequence[ProblemScore], names: Sequence[str], key: Callable[[ProblemScore], Any]
) -> dict[str, dict[str, Any]]:
    """Return the metrics per group, omitting problems whose group is unknown.

    Groups sort by their value, so levels are in numeric order; all groups of one key share a type.
    """
    groups: dict[Any, list[ProblemScore]] = collections.defaultdict(list)
    for score in scores:
        group = key(score)
        if group is not None:
            groups[group].append(score)
    return {str(group): _metrics(groups[group], names) for group in sorted(groups)}
