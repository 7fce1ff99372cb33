"""Turn raw rows into problem records, or into the reason a row is skipped."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from typing import Any

from sphere_jax.data.problem import Problem
from sphere_jax.data.spec import AnswerFormat, FieldMapping
from sphere_jax.grading import gsm8k_gold, is_parsable_answer, last_boxed
from sphere_jax.grading.extract import braces_balanced
from sphere_jax.grading.normalize import AnswerTooLongError, normalize_answer

# "9 (apples)", "14  (seats)": ASDiv appends the unit in brackets.
_TRAILING_UNIT = re.compile(r"\s*\([^()]*\)\s*$")
_LEVEL_NUMBER = re.compile(r"(-?\d+)")
_SENTENCE_END = (".", "?", "!", ":")


class SkipReason(enum.StrEnum):
    """Reason a row was skipped."""

    MISSING_QUESTION = "missing_question"  # Field absent, null or blank.
    MISSING_ANSWER = "missing_answer"  # Field absent, null or blank.
    UNPARSABLE_ANSWER = "unparsable_answer"  # No usable final answer (see ``classify_gold``).
    NON_TEXT_FIELD = "non_text_field"  # Question or answer is a list, object or boolean.
    DUPLICATE_ID = "duplicate_id"  # The row id repeats an earlier row's id.


class GoldKind(enum.StrEnum):
    """How the checker can compare predictions with a gold answer."""

    MATH = "math"  # The grader parses it, so equivalent forms match ("0.5" and "\frac{1}{2}").
    TEXT = "text"  # The grader cannot parse it, so only equal normalized texts match ("June 20").


class RowError(Exception):
    """A row that cannot become a problem, with its skip reason in ``reason``."""

    def __init__(self, reason: SkipReason, detail: str):
        super().__init__(detail)
        self.reason = reason


def row_id(row: dict[str, Any], key: str | None, index: int, mapping: FieldMapping) -> str:
    """Return the row's own id: its id field, else its JSON key, else its 0-based row number."""
    if mapping.id is not None:
        value = row.get(mapping.id)
        if value is not None and not isinstance(value, (dict, list)) and str(value).strip():
            return str(value).strip()
    if key is not None:
        return key
    return str(index)


def classify_gold(answer: str, require_parsable: bool = False) -> GoldKind:
    """Return how the checker can compare predictions with ``answer``.

    Args:
        answer: The gold final answer.
        require_parsable: Reject gold answers that the grader can compare only as text.

    Raises:
        RowError: With reason ``unparsable_answer`` if the braces of ``answer`` are unbalanced,
            its normalized text is empty or too long, or ``require_parsable`` is set and the
            grader cannot parse it.
    """
    if not braces_balanced(answer):
        raise RowError(SkipReason.UNPARSABLE_ANSWER, f"gold answer {answer!r} has unbalanced braces")
    if is_parsable_answer(answer):
        return GoldKind.MATH
    if require_parsable:
        raise RowError(SkipReason.UNPARSABLE_ANSWER, f"gold answer {answer!r} cannot be parsed as math")
    try:
        normalized = normalize_answer(answer)
    except AnswerTooLongError:
        raise RowError(SkipReason.UNPARSABLE_ANSWER, f"gold answer of {len(answer)} characters is too long") from None
    if not normalized.strip():
        raise RowError(SkipReason.UNPARSABLE_ANSWER, f"gold answer {answer!r} normalizes to nothing")
    return GoldKind.TEXT


def row_to_problem(
    row: dict[str, Any],
    raw_id: str,
    mapping: FieldMapping,
    *,
    source: str,
    split: str,
    classify: Callable[[str], GoldKind],
) -> tuple[Problem, GoldKind]:
    """Build a problem from one raw row.

    Args:
        row: The raw row.
        raw_id: The row's own id (see ``row_id``).
        mapping: Which fields contain the question, answer, level and subject.
        source: Set name for the record.
        split: Split name for the record.
        classify: ``classify_gold`` with its options bound, possibly cached.

    Returns:
        The problem and the kind of its gold answer.

    Raises:
        RowError: If the row has no usable question or gold answer.
    """
    question = _question_text(row, mapping)
    answer = _gold_answer(row, mapping)
    kind = classify(answer)
    problem = Problem(
        id=f"{source}:{split}:{raw_id}",
        question=question,
        answer=answer,
        source=source,
        split=split,
        level=parse_level(row.get(mapping.level)) if mapping.level else None,
        subject=_subject(row.get(mapping.subject)) if mapping.subject else None,
    )
    return problem, kind


def _question_text(row: dict[str, Any], mapping: FieldMapping) -> str:
    parts = []
    for field in mapping.question:
        value = row.get(field)
        if _is_blank(value):
            continue
        if not isinstance(value, str):
            raise RowError(SkipReason.NON_TEXT_FIELD, f"question field {field!r} is a {type(value).__name__}")
        parts.append(value.strip())
    if not parts:
        raise RowError(SkipReason.MISSING_QUESTION, f"question field {'/'.join(mapping.question)} is missing or blank")
    question = parts[0]
    # SVAMP bodies often end without a period before the question sentence.
    for part in parts[1:]:
        separator = " " if question.endswith(_SENTENCE_END) else ". "
        question = question + separator + part

    if mapping.choices is not None:
        choices = row.get(mapping.choices)
        if isinstance(choices, list) and all(isinstance(choice, str) for choice in choices):
            choices = ", ".join(choices)
        if isinstance(choices, str) and choices.strip():
            question = f"{question}\nOptions: {choices.strip()}"
        elif not _is_blank(choices):
            raise RowError(SkipReason.NON_TEXT_FIELD, f"choices field {mapping.choices!r} is a {type(choices).__name__}")
    return question


def _gold_answer(row: dict[str, Any], mapping: FieldMapping) -> str:
    value = row.get(mapping.answer)
    # OlympiadBench stores final answers as a list of strings, one per part of the question.
    if isinstance(value, list) and value and all(isinstance(part, str) for part in value):
        value = ", ".join(_strip_dollars(part) for part in value)
    if _is_blank(value):
        raise RowError(SkipReason.MISSING_ANSWER, f"answer field {mapping.answer!r} is missing or blank")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(SkipReason.NON_TEXT_FIELD, f"answer field {mapping.answer!r} is a {type(value).__name__}")
    if not isinstance(value, str):
        if isinstance(value, float) and not math.isfinite(value):
            raise RowError(SkipReason.UNPARSABLE_ANSWER, f"answer field {mapping.answer!r} is {value}")
        return format_number(value)

    text = value.strip()
    answer_format = mapping.answer_format
    if answer_format is AnswerFormat.AUTO:
        answer_format = _detect_answer_format(text)
    if answer_format is AnswerFormat.GSM8K:
        answer = gsm8k_gold(text)
    elif answer_format is AnswerFormat.BOXED:
        answer = last_boxed(text)
    elif answer_format is AnswerFormat.STRIP_UNIT:
        answer = _TRAILING_UNIT.sub("", text)
    else:
        answer = _strip_dollars(text)
    if answer is None or not answer.strip():
        raise RowError(
            SkipReason.UNPARSABLE_ANSWER, f"no final answer found in {mapping.answer!r} read as {answer_format.value}"
        )
    return answer.strip()


def _strip_dollars(text: str) -> str:
    """Remove one pair of ``$`` that wraps the whole answer: ``"$55$"`` -> ``"55"``."""
    text = text.strip()
    if len(text) > 2 and text.startswith("$") and text.endswith("$") and "$" not in text[1:-1]:
        return text[1:-1].strip()
    return text


def _detect_answer_format(text: str) -> AnswerFormat:
    if "####" in text:
        return AnswerFormat.GSM8K
    if "\\boxed" in text or "\\fbox" in text:
        return AnswerFormat.BOXED
    return AnswerFormat.RAW


def format_number(value: int | float) -> str:
    """Return a number as answer text: integral floats lose their ``.0`` (``145.0`` -> ``"145"``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def parse_level(value: Any) -> int | None:
    """Return the level as an int: ``3``, ``"3"`` and ``"Level 3"`` give 3; ``"Level ?"`` gives None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _LEVEL_NUMBER.search(value)
        return int(match.group(1)) if match else None
    return None


def _subject(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):  # Empty Parquet and pandas cells.
        return True
    return isinstance(value, str) and not value.strip()
