"""Find training problems that share a word n-gram with an evaluation problem.

Texts are lower-cased and split into runs of letters and digits (punctuation is dropped). A
training problem overlaps an evaluation problem when a run of ``n`` consecutive words (13 by
default) occurs in both questions. Problems with fewer than ``n`` words have no n-grams, so
they can never be flagged.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Sequence

from sphere_jax.data.problem import Problem

DEFAULT_NGRAM = 13
_WORD = re.compile(r"[^\W_]+")


@dataclasses.dataclass(frozen=True)
class ContaminationMatch:
    """A training problem that shares at least one n-gram with evaluation problems.

    Attributes:
        train_id: Id of the training problem.
        eval_id: Id of the evaluation problem that shares the most n-grams with it.
        shared_ngrams: Number of distinct n-grams shared with ``eval_id``.
        example_ngram: The first shared n-gram of the training question, words joined by spaces.
        all_eval_ids: Every evaluation problem that shares an n-gram, most shared first.
    """

    train_id: str
    eval_id: str
    shared_ngrams: int
    example_ngram: str
    all_eval_ids: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """Return the match as a JSON-ready dict."""
        return dataclasses.asdict(self)


def words(text: str) -> list[str]:
    """Split text into lower-case words: runs of letters and digits, punctuation dropped."""
    return _WORD.findall(text.lower())


def word_ngrams(text: str, n: int = DEFAULT_NGRAM) -> set[str]:
    """Return the distinct word n-grams of ``text``, each as its words joined by single spaces."""
    return set(_ordered_ngrams(text, n))


def _ordered_ngrams(text: str, n: int) -> list[str]:
    """Return the distinct word n-grams of ``text`` in order of first occurrence."""
    tokens = words(text)
    return list(dict.fromkeys(" ".join(tokens[start : start + n]) for start in range(len(tokens) - n + 1)))


def find_contamination(
    train: Iterable[Problem], evaluation: Sequence[Problem], n: int = DEFAULT_NGRAM
) -> list[ContaminationMatch]:
    """List the training problems whose question shares a word n-gram with an evaluation question.

    Args:
        train: Training problems to check.
        evaluation: Evaluation problems, from one or several benchmarks.
        n: N-gram length in words.

    Returns:
        One match per flagged training problem, in training order.

    Raises:
        ValueError: If ``n`` is below 1.
    """
    if n < 1:
        raise ValueError(f"n-gram length must be at least 1, got {n}.")
    owners: dict[str, list[int]] = collections.defaultdict(list)  # n-gram -> evaluation indices
    for eval_index, problem in enumerate(evaluation):
        for gram in word_ngrams(problem.question, n):
            owners[gram].append(eval_index)

    matches = []
    for problem in train:
        shared: collections.Counter[int] = collections.Counter()
        example: dict[int, str] = {}
        for gram in _ordered_ngrams(problem.question, n):
            for eval_index in owners.get(gram, ()):
                shared[eval_index] += 1
                example.setdefault(eval_index, gram)
        if not shared:
            continue
        ranked = shared.most_common()
        best_index, best_count = ranked[0]
        matches.append(
            ContaminationMatch(
                train_id=problem.id,
                eval_id=evaluation[best_index].id,
                shared_ngrams=best_count,
                example_ngram=example[best_index],
                all_eval_ids=tuple(evaluation[index].id for index, _ in ranked),
            )
        )
    return matches


def remove_contaminated(train: Sequence[Problem], matches: Iterable[ContaminationMatch]) -> list[Problem]:
    """Return the training problems that no match flags, in their original order."""
    flagged = {match.train_id for match in matches}
    return [problem for problem in train if problem.id not in flagged]
