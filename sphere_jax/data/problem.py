"""The problem record and the problem set that every loader returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class Problem:
    """One math problem with its gold answer.

    Attributes:
        id: Identifier unique across sets, ``"<source>:<split>:<row id>"``, for example
            ``"gsm8k:test:0"``.
        question: Problem text as shown to the model.
        answer: Gold final answer as text (``"18"``, ``"\\frac{1}{2}"``), never a full solution.
        source: Set name from the spec (``"gsm8k"``, ``"math500"``, a file's stem).
        split: Split name (``"train"``, ``"test"``).
        level: Difficulty level where the source gives one (MATH: 1 to 5), else None.
        subject: Subject or problem type where the source gives one, else None.
    """

    id: str
    question: str
    answer: str
    source: str
    split: str
    level: int | None = None
    subject: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Return the record as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ProblemSet:
    """Problems loaded from one spec, with the counts of rows that were left out.

    Attributes:
        spec: The spec string the set was loaded from.
        source: Set name, the ``source`` of every problem.
        split: Split name, the ``split`` of every problem.
        problems: Problems in file order, after filters, de-duplication and the subset.
        rows_read: Rows read from the file before anything was left out.
        skipped: Count of bad rows per reason (see ``sphere_jax.data.rows.SkipReason``).
        skipped_ids: First few row ids per skip reason, for the log and the report.
        duplicates_removed: Rows dropped because their question repeats an earlier one.
        filtered_out: Valid rows dropped by the ``level`` or ``subject`` filter.
        text_only_answers: Loaded problems whose gold answer the grader cannot parse as math, so
            only a prediction with the same normalized text matches it (MATH's ``\text{June 20}``).
        text_only_ids: First few row ids of those problems.
    """

    spec: str
    source: str
    split: str
    problems: list[Problem]
    rows_read: int
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped_ids: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    duplicates_removed: int = 0
    filtered_out: int = 0
    text_only_answers: int = 0
    text_only_ids: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)

    def __getitem__(self, index: int) -> Problem:
        return self.problems[index]

    @property
    def num_skipped(self) -> int:
        """Total number of bad rows skipped."""
        return sum(self.skipped.values())

    def summary(self) -> dict[str, object]:
        """Return the counts as a JSON-ready dict (no problem texts)."""
        return {
            "spec": self.spec,
            "source": self.source,
            "split": self.split,
            "problems": len(self.problems),
            "rows_read": self.rows_read,
            "skipped": dict(self.skipped),
            "skipped_ids": {reason: list(ids) for reason, ids in self.skipped_ids.items()},
            "duplicates_removed": self.duplicates_removed,
            "filtered_out": self.filtered_out,
            "text_only_answers": self.text_only_answers,
            "text_only_ids": list(self.text_only_ids),
        }
