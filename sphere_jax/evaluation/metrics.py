"""Pass@k, majority voting and confidence intervals: pure functions on counts and answers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Two-sided 95% quantile of the standard normal distribution.
Z_95 = 1.959963984540054


def pass_at_k(n: int, c: int, k: int) -> float:
    """Return the unbiased pass@k estimate for one problem, ``1 - C(n - c, k) / C(n, k)``.

    The estimator is from Chen et al. 2021, "Evaluating Large Language Models Trained on Code".
    It is computed as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``, which avoids huge binomials.

    Args:
        n: Samples drawn for the problem.
        c: Correct samples among them.
        k: The k of pass@k.

    Raises:
        ValueError: If not ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n}; draw at least k samples.")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Return the Wilson score interval of a binomial proportion.

    Raises:
        ValueError: If ``total`` is not positive or ``successes`` is outside ``[0, total]``.
    """
    if total <= 0:
        raise ValueError(f"Wilson interval needs at least one trial, got total={total}.")
    if not 0 <= successes <= total:
        raise ValueError(f"Wilson interval needs 0 <= successes <= total, got {successes} of {total}.")
    proportion = successes / total
    z_squared = z * z
    denominator = 1.0 + z_squared / total
    center = (proportion + z_squared / (2 * total)) / denominator
    half_width = z * math.sqrt(proportion * (1 - proportion) / total + z_squared / (4 * total * total)) / denominator
    return max(0.0, center - half_width), min(1.0, center + half_width)


def mean_interval(values: Sequence[float], z: float = Z_95) -> tuple[float, float]:
    """Return the normal-approximation interval of the mean of per-problem scores in [0, 1].

    The interval is ``mean +- z * s / sqrt(N)`` with the sample standard deviation ``s``,
    clipped to [0, 1]. With fewer than two values no spread can be estimated and it is (0, 1).

    Raises:
        ValueError: If ``values`` is empty.
    """
    if not values:
        raise ValueError("Mean interval needs at least one value.")
    if len(values) < 2:
        return 0.0, 1.0
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    half_width = z * float(array.std(ddof=1)) / math.sqrt(len(array))
    return max(0.0, mean - half_width), min(1.0, mean + half_width)


def answer_key(answer: str) -> str:
    """Return the key under which majority voting groups an answer: the text without whitespace."""
    return "".join(answer.split())


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Return the index of a sample whose answer is the most frequent one, or None if none has one.

    Answers are grouped by ``answer_key``, so ``"1/2"`` and ``"1 / 2"`` vote together but ``"0.5"``
    does not. Samples without an answer do not vote. A tie goes to the answer that appeared first.
    """
    counts: dict[str, int] = {}
    first_index: dict[str, int] = {}
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        key = answer_key(answer)
        counts[key] = counts.get(key, 0) + 1
        first_index.setdefault(key, index)
    if not counts:
        return None
    winner = max(counts, key=lambda key: (counts[key], -first_index[key]))
    return first_index[winner]
