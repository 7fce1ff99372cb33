"""Load a problem set from a spec string: the single entry point of ``sphere_jax.data``."""

from __future__ import annotations

import collections
import functools
import logging
import time
from pathlib import Path
from typing import Any

from sphere_jax.data.builtin import BUILTIN_SETS
from sphere_jax.data.errors import BadRowsError, DataFormatError, SpecError
from sphere_jax.data.external import read_hf_rows, read_tfds_rows
from sphere_jax.data.problem import Problem, ProblemSet
from sphere_jax.data.readers import detect_format, read_rows
from sphere_jax.data.rows import GoldKind, RowError, SkipReason, classify_gold, row_id, row_to_problem
from sphere_jax.data.spec import DatasetSpec, FieldMapping, parse_spec
from sphere_jax.data.subsets import deduplicate, filter_problems, select_subset

logger = logging.getLogger(__name__)

# Row ids kept per skip reason for the log, the error and ProblemSet.skipped_ids.
MAX_LOGGED_IDS = 5


def load_problems(
    spec: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    strict: bool = False,
    dedup: bool | None = None,
    require_parsable: bool | None = None,
) -> ProblemSet:
    """Load the problems a spec names, skipping bad rows.

    Order of steps: read rows, convert them (bad rows are skipped and counted), filter by level
    and subject, drop repeated questions when ``dedup`` is on, then take the subset.

    Args:
        spec: A spec string such as ``"gsm8k:test"``, ``"math:test?level=5"`` or
            ``"file:aime.jsonl?question=problem&answer=answer"`` (grammar in ``sphere_jax.data.spec``).
        limit: Maximum number of problems; overrides the spec's ``limit``.
        seed: None takes the first ``limit`` problems; an int draws a seeded random subset.
            Overrides the spec's ``seed``.
        strict: Raise BadRowsError, listing every bad row's reason, instead of skipping bad rows.
        dedup: Drop problems whose normalized question repeats an earlier one; overrides the spec.
        require_parsable: Also skip rows whose gold answer the grader can compare only as
            normalized text, not as math; overrides the spec. Off by default, so that gold answers
            such as MATH's ``\text{June 20}`` stay in the set.

    Returns:
        The problems and the counts of what was left out.

    Raises:
        SpecError: If the spec is invalid.
        FileNotFoundError: If the data file or package is missing.
        DataFormatError: If the file does not match its format, or a mapped field is in no row.
        BadRowsError: In strict mode, if any row is bad.
    """
    parsed = parse_spec(spec, frozenset(BUILTIN_SETS))
    started = time.perf_counter()

    raw_rows, mapping, origin = _read_raw_rows(parsed)
    _check_mapping(mapping, raw_rows, origin)
    strict_gold = parsed.require_parsable if require_parsable is None else require_parsable
    problems, skipped, skipped_ids, text_only_ids = _convert_rows(raw_rows, mapping, parsed, strict_gold)
    if text_only_ids:
        logger.info(
            "%s: %d gold answers compare as text only, because the grader cannot parse them as math (first ids %s)",
            spec,
            len(text_only_ids),
            text_only_ids[:MAX_LOGGED_IDS],
        )

    if skipped:
        detail = "; ".join(
            f"{reason}: {count} (first ids {skipped_ids[reason]})" for reason, count in sorted(skipped.items())
        )
        if strict:
            raise BadRowsError(f"{origin} ({spec}) has {sum(skipped.values())} bad rows: {detail}.")
        logger.warning("Skipped %d bad rows of %s (%s): %s", sum(skipped.values()), origin, spec, detail)

    filtered = filter_problems(problems, parsed.levels, parsed.subjects)
    filtered_out = len(problems) - len(filtered)
    use_dedup = parsed.dedup if dedup is None else dedup
    unique = deduplicate(filtered) if use_dedup else filtered
    duplicates_removed = len(filtered) - len(unique)
    chosen = select_subset(
        unique,
        limit=limit if limit is not None else parsed.limit,
        seed=seed if seed is not None else parsed.seed,
    )

    logger.info(
        "Loaded %d problems from %s in %.2f s (%d rows read, %d skipped, %d filtered out, %d duplicates removed)",
        len(chosen),
        spec,
        time.perf_counter() - started,
        len(raw_rows),
        sum(skipped.values()),
        filtered_out,
        duplicates_removed,
    )
    return ProblemSet(
        spec=spec,
        source=parsed.name,
        split=parsed.split,
        problems=chosen,
        rows_read=len(raw_rows),
        skipped=skipped,
        skipped_ids=skipped_ids,
        duplicates_removed=duplicates_removed,
        filtered_out=filtered_out,
        text_only_answers=len(text_only_ids),
        text_only_ids=text_only_ids[:MAX_LOGGED_IDS],
    )


def _read_raw_rows(parsed: DatasetSpec) -> tuple[list[tuple[str | None, dict[str, Any]]], FieldMapping, str]:
    """Return the ``(json key, row)`` pairs, the field mapping and a name of the origin for messages."""
    if parsed.kind == "builtin":
        builtin = BUILTIN_SETS[parsed.name]
        try:
            path = builtin.path(parsed.split)
        except ValueError as error:
            raise SpecError(f"Invalid spec {parsed.text!r}: {error}") from None
        rows = read_rows(path, "jsonl" if builtin.records_key is None else "json", builtin.records_key)
        return rows, builtin.mapping, str(path)

    mapping = parsed.field_mapping()
    assert parsed.location is not None
    if parsed.kind == "file":
        path = Path(parsed.location).expanduser()
        file_format = detect_format(path, parsed.options.get("format"))
        return read_rows(path, file_format, parsed.options.get("records")), mapping, str(path)
    if parsed.kind == "hf":
        rows = read_hf_rows(parsed.location, parsed.split, parsed.options.get("config"))
        return [(None, row) for row in rows], mapping, f"datasets {parsed.location}"
    rows = read_tfds_rows(parsed.location, parsed.split)
    return [(None, row) for row in rows], mapping, f"tfds {parsed.location}"


def _check_mapping(mapping: FieldMapping, rows: list[tuple[str | None, dict[str, Any]]], origin: str) -> None:
    """Raise DataFormatError when a mapped field occurs in no row, which means a wrong field name."""
    if not rows:
        return
    present: set[str] = set()
    for _, row in rows:
        present.update(row)
    required = {"question": mapping.question[0] if len(mapping.question) == 1 else None, "answer": mapping.answer}
    for role, field in required.items():
        if field is not None and field not in present:
            raise DataFormatError(
                f"{origin}: no row has the {role} field {field!r}; fields found are {sorted(present)[:20]}. "
                f"Name the right field in the spec, for example '?{role}=<field>'."
            )
    if len(mapping.question) > 1 and not present.intersection(mapping.question):
        raise DataFormatError(
            f"{origin}: no row has any of the question fields {list(mapping.question)}; fields found are {sorted(present)[:20]}."
        )


def _convert_rows(
    raw_rows: list[tuple[str | None, dict[str, Any]]],
    mapping: FieldMapping,
    parsed: DatasetSpec,
    require_parsable: bool,
) -> tuple[list[Problem], dict[str, int], dict[str, list[str]], list[str]]:
    """Convert rows to problems.

    Returns:
        The problems, the skip count per reason, the first skipped ids per reason, and the
        ids of all problems whose gold answer compares as text only.
    """
    problems: list[Problem] = []
    skipped: collections.Counter[str] = collections.Counter()
    skipped_ids: dict[str, list[str]] = {}
    text_only_ids: list[str] = []
    seen_ids: set[str] = set()
    classify = functools.lru_cache(maxsize=None)(functools.partial(classify_gold, require_parsable=require_parsable))

    for index, (key, row) in enumerate(raw_rows):
        raw_id = row_id(row, key, index, mapping)
        try:
            if raw_id in seen_ids:
                raise RowError(SkipReason.DUPLICATE_ID, f"row id {raw_id!r} repeats")
            problem, gold_kind = row_to_problem(
                row, raw_id, mapping, source=parsed.name, split=parsed.split, classify=classify
            )
        except RowError as error:
            skipped[error.reason.value] += 1
            ids = skipped_ids.setdefault(error.reason.value, [])
            if len(ids) < MAX_LOGGED_IDS:
                ids.append(raw_id)
            logger.debug("Skipping row %s of %s: %s", raw_id, parsed.text, error)
            continue
        seen_ids.add(raw_id)
        problems.append(problem)
        if gold_kind is GoldKind.TEXT:
            text_only_ids.append(raw_id)
    return problems, dict(skipped), skipped_ids, text_only_ids
