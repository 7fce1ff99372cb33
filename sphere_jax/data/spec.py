"""Parse dataset spec strings, the one naming scheme for configs and the CLI.

Grammar::

    <set>:<split>[?<query>]          bundled set, for example ``gsm8k:test``, ``math:test?level=5``
    file:<path>[?<query>]            local JSONL, JSON, Parquet or CSV file
    hf:<dir or hub name>[?<query>]   a ``datasets`` dataset saved to disk, or a hub dataset
    tfds:<name>[?<query>]            a TensorFlow Datasets dataset (needs ``tensorflow-datasets``)

The query is URL-encoded ``key=value`` pairs joined by ``&``. Keys for every spec:

* ``level``: keep only these levels, comma-separated (``level=4,5``).
* ``subject``: keep only these subjects, comma-separated, case-insensitive.
* ``limit``: keep at most this many problems.
* ``seed``: draw the ``limit`` problems at random with this seed instead of taking the first ones.
* ``dedup``: ``1`` drops problems whose normalized question repeats an earlier one.
* ``require_parsable``: ``1`` also skips rows whose gold answer the grader can compare only as text.

Keys for ``file:``, ``hf:`` and ``tfds:`` specs, which name the fields of each row:

* ``question``: question field, or several joined in order (``question=Body,Question``).
* ``answer``: gold answer field. ``answer_format``: how to read it (see ``AnswerFormat``).
* ``id``, ``level_field``, ``subject_field``, ``choices``: optional fields.
* ``name`` and ``split``: the ``source`` and ``split`` of the records.
* ``format`` (files only): ``jsonl``, ``json``, ``parquet`` or ``csv`` when the suffix does not say.
* ``records`` (JSON files only): dotted key of the list or dict of rows inside the top-level object.
* ``config`` (``hf:`` only): the dataset configuration name, for example ``main`` for GSM8K.
"""

from __future__ import annotations

import dataclasses
import enum
import urllib.parse

from sphere_jax.data.errors import SpecError

EXTERNAL_KINDS = ("file", "hf", "tfds")

FILTER_KEYS = frozenset({"level", "subject", "limit", "seed", "dedup", "require_parsable"})
MAPPING_KEYS = frozenset(
    {"question", "answer", "answer_format", "id", "level_field", "subject_field", "choices", "name", "split"}
)
KIND_KEYS = {
    "builtin": FILTER_KEYS,
    "file": FILTER_KEYS | MAPPING_KEYS | {"format", "records"},
    "hf": FILTER_KEYS | MAPPING_KEYS | {"config"},
    "tfds": FILTER_KEYS | MAPPING_KEYS,
}
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


class AnswerFormat(enum.StrEnum):
    """How the gold answer field of a row becomes the gold final answer."""

    RAW = "raw"  # The final answer itself: numbers become text (145.0 -> "145"), lists of strings are joined.
    GSM8K = "gsm8k"  # A GSM8K solution ending in "#### <answer>".
    BOXED = "boxed"  # A solution whose last \boxed{...} contains the answer (MATH).
    STRIP_UNIT = "strip_unit"  # A final answer with a trailing unit in brackets: "9 (apples)".
    AUTO = "auto"  # GSM8K if the text contains "####", else BOXED if it contains \boxed, else RAW.


@dataclasses.dataclass(frozen=True)
class FieldMapping:
    """Which fields of a raw row hold the parts of a problem.

    Attributes:
        question: Field names whose texts are joined, in order, into the question.
        answer: Field name of the gold answer.
        answer_format: How to read the gold answer field.
        id: Field name of the row id, or None to use the 0-based row number.
        level: Field name of the difficulty level, or None.
        subject: Field name of the subject, or None.
        choices: Field name of multiple-choice options appended to the question, or None.
    """

    question: tuple[str, ...]
    answer: str
    answer_format: AnswerFormat = AnswerFormat.AUTO
    id: str | None = None
    level: str | None = None
    subject: str | None = None
    choices: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A parsed spec string.

    Attributes:
        text: The spec string as given.
        kind: ``"builtin"``, ``"file"``, ``"hf"`` or ``"tfds"``.
        name: Bundled set name, or the ``source`` given to external records.
        split: Split name.
        location: Path, hub name or TFDS name for external kinds, else None.
        options: Query pairs that are not filters (field names, format, records, config).
        levels: Levels to keep, or None for all.
        subjects: Lower-cased subjects to keep, or None for all.
        limit: Maximum number of problems, or None.
        seed: Seed of the random subset, or None to take the first ``limit`` problems.
        dedup: Whether to drop repeated questions.
        require_parsable: Whether to skip gold answers that the grader cannot parse as math.
    """

    text: str
    kind: str
    name: str
    split: str
    location: str | None = None
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    levels: frozenset[int] | None = None
    subjects: frozenset[str] | None = None
    limit: int | None = None
    seed: int | None = None
    dedup: bool = False
    require_parsable: bool = False

    def field_mapping(self) -> FieldMapping:
        """Build the field mapping of an external spec from its query.

        Raises:
            SpecError: If ``question`` or ``answer`` is missing or ``answer_format`` is unknown.
        """
        missing = [key for key in ("question", "answer") if not self.options.get(key)]
        if missing:
            raise SpecError(
                f"Spec {self.text!r} does not name the {' and '.join(missing)} field; "
                f"add for example '?question=problem&answer=answer'."
            )
        answer_format = self.options.get("answer_format", AnswerFormat.AUTO.value)
        try:
            parsed_format = AnswerFormat(answer_format)
        except ValueError:
            valid = ", ".join(member.value for member in AnswerFormat)
            raise SpecError(
                f"Spec {self.text!r} has answer_format={answer_format!r}; valid formats are {valid}."
            ) from None
        question_fields = tuple(part.strip() for part in self.options["question"].split(",") if part.strip())
        return FieldMapping(
            question=question_fields,
            answer=self.options["answer"],
            answer_format=parsed_format,
            id=self.options.get("id"),
            level=self.options.get("level_field"),
            subject=self.options.get("subject_field"),
            choices=self.options.get("choices"),
        )


def parse_spec(text: str, builtin_names: frozenset[str] | set[str] | None = None) -> DatasetSpec:
    """Parse a spec string such as ``"math:test?level=5"``.

    Args:
        text: The spec string.
        builtin_names: Names of the bundled sets, to reject unknown names early. None skips the check.

    Returns:
        The parsed spec.

    Raises:
        SpecError: If the spec has no ``:``, an unknown set name or query key, or an invalid value.
    """
    if not isinstance(text, str) or ":" not in text:
        raise SpecError(
            f"Invalid dataset spec {text!r}: expected '<set>:<split>' (for example 'gsm8k:test') "
            f"or 'file:<path>?question=...&answer=...'."
        )
    head, _, query = text.partition("?")
    kind_or_name, _, rest = head.partition(":")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False) if query else []
    options: dict[str, str] = {}
    for key, value in pairs:
        if key in options:
            raise SpecError(f"Spec {text!r} repeats the query key {key!r}; give each key once.")
        options[key] = value

    if kind_or_name in EXTERNAL_KINDS:
        kind = kind_or_name
        location = rest
        if not location:
            raise SpecError(f"Spec {text!r} has no {'path' if kind == 'file' else 'dataset name'} after '{kind}:'.")
        name = options.get("name") or _default_name(kind, location)
        split = options.get("split") or "test"
    else:
        kind = "builtin"
        location = None
        name = kind_or_name
        split = rest
        if builtin_names is not None and name not in builtin_names:
            valid = ", ".join(sorted(builtin_names))
            raise SpecError(
                f"Unknown dataset {name!r} in spec {text!r}; bundled sets are {valid}, "
                f"and local or hub data use 'file:', 'hf:' or 'tfds:'."
            )
        if not split:
            raise SpecError(f"Spec {text!r} has no split; write for example '{name}:test'.")

    allowed = KIND_KEYS[kind]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SpecError(
            f"Spec {text!r} has unknown query keys {unknown}; keys valid for {kind} specs are "
            f"{sorted(allowed)}."
        )

    return DatasetSpec(
        text=text,
        kind=kind,
        name=name,
        split=split,
        location=location,
        options={key: value for key, value in options.items() if key not in FILTER_KEYS},
        levels=_parse_levels(text, options.get("level")),
        subjects=_parse_subjects(options.get("subject")),
        limit=_parse_non_negative_int(text, "limit", options.get("limit")),
        seed=_parse_non_negative_int(text, "seed", options.get("seed")),
        dedup=_parse_bool(text, "dedup", options.get("dedup")),
        require_parsable=_parse_bool(text, "require_parsable", options.get("require_parsable")),
    )


def _default_name(kind: str, location: str) -> str:
    stem = location.rstrip("/").rsplit("/", 1)[-1]
    if kind == "file":
        stem = stem.split(".", 1)[0]
    return stem or kind


def _parse_levels(text: str, value: str | None) -> frozenset[int] | None:
    if value is None:
        return None
    try:
        levels = frozenset(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise SpecError(f"Spec {text!r} has level={value!r}; expected integers separated by commas.") from None
    if not levels:
        raise SpecError(f"Spec {text!r} has an empty level filter; remove it or give levels like 'level=5'.")
    return levels


def _parse_subjects(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset(part.strip().lower() for part in value.split(",") if part.strip()) or None


def _parse_non_negative_int(text: str, key: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise SpecError(f"Spec {text!r} has {key}={value!r}; expected a non-negative integer.") from None
    if number < 0:
        raise SpecError(f"Spec {text!r} has {key}={value!r}; expected a non-negative integer.")
    return number


def _parse_bool(text: str, key: str, value: str | None) -> bool:
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise SpecError(f"Spec {text!r} has {key}={value!r}; expected 1 or 0.")
