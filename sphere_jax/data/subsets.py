"""Filters, de-duplication and deterministic subsets of problem lists."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from sphere_jax.data.problem import Problem

_NON_WORD = re.compile(r"[^\w]+")


def normalize_question(question: str) -> str:
    """Return the question lower-cased with punctuation and whitespace runs replaced by one space."""
    return _NON_WORD.sub(" ", question.lower()).strip()


def filter_problems(
    problems: Sequence[Problem], levels: frozenset[int] | None, subjects: frozenset[str] | None
) -> list[Problem]:
    """Keep the problems whose level is in ``levels`` and whose subject is in ``subjects``.

    A None filter keeps everything. Subjects compare case-insensitively, and ``subjects`` contains
    lower-case names. A problem with an unknown level or subject fails an active filter.
    """
    kept = []
    for problem in problems:
        if levels is not None and problem.level not in levels:
            continue
        if subjects is not None and (problem.subject is None or problem.subject.lower() not in subjects):
            continue
        kept.append(problem)
    return kept


def deduplicate(problems: Sequence[Problem]) -> list[Problem]:
    """Drop problems whose normalized question repeats an earlier one, keeping the first."""
    seen: set[str] = set()
    kept = []
    for problem in problems:
        key = normalize_question(problem.question)
        if key in seen:
            continue
        seen.add(key)
        kept.append(problem)
    return kept


def select_subset(problems: Sequence[Problem], limit: int | None, seed: int | None) -> list[Problem]:
    """Return a deterministic subset of at most ``limit`` problems, in their original order.

    Args:
        problems: The problems.
        limit: Maximum number to keep, or None for all.
        seed: None takes the first ``limit`` problems. An int draws ``limit`` problems without
            replacement from ``numpy.random.default_rng(seed).permutation``. The draw is nested:
            with the same seed, a smaller limit keeps a subset of a larger limit's problems.
    """
    if limit is None or limit >= len(problems):
        return list(problems)
    if seed is None:
        return list(problems[:limit])
    order = np.random.default_rng(seed).permutation(len(problems))  # [num_problems]
    chosen = np.sort(order[:limit])
    return [problems[int(index)] for index in chosen]
