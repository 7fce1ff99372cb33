"""Read raw rows (dicts) from JSONL, JSON, Parquet and CSV files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from sphere_jax.data.errors import DataFormatError

FILE_FORMATS = ("jsonl", "json", "parquet", "csv")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def detect_format(path: Path, declared: str | None = None) -> str:
    """Return the file format: ``declared`` if given, else the one its suffix names.

    Raises:
        DataFormatError: If ``declared`` is unknown or the suffix names no known format.
    """
    if declared is not None:
        if declared not in FILE_FORMATS:
            raise DataFormatError(f"Unknown format {declared!r} for {path}; valid formats are {', '.join(FILE_FORMATS)}.")
        return declared
    file_format = _SUFFIX_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise DataFormatError(
            f"Cannot tell the format of {path} from its suffix {path.suffix!r}; "
            f"rename it to .jsonl, .json, .parquet or .csv, or add 'format=jsonl' (or json, parquet, csv) to the spec."
        )
    return file_format


def read_rows(path: Path, file_format: str, records_key: str | None = None) -> list[tuple[str | None, dict[str, Any]]]:
    """Read every row of a data file.

    Args:
        path: The file.
        file_format: One of ``FILE_FORMATS``.
        records_key: For JSON files, the dotted key of the rows inside the top-level object.

    Returns:
        ``(key, row)`` pairs in file order. ``key`` is the dict key of the row when the JSON rows
        are a dict of objects (the CHAMP layout), else None.

    Raises:
        FileNotFoundError: If the file does not exist.
        DataFormatError: If the content does not match ``file_format``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"Problem file not found: {path} (expected a {file_format} file of problems).")
    if records_key is not None and file_format != "json":
        raise DataFormatError(f"'records={records_key}' applies to JSON files only, but {path} is read as {file_format}.")
    if file_format == "jsonl":
        return [(None, row) for row in _read_jsonl(path)]
    if file_format == "json":
        return _read_json(path, records_key)
    if file_format == "parquet":
        return [(None, row) for row in _read_parquet(path)]
    if file_format == "csv":
        return [(None, row) for row in _read_csv(path)]
    raise DataFormatError(f"Unknown format {file_format!r} for {path}; valid formats are {', '.join(FILE_FORMATS)}.")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(
                    f"{path}, line {line_number}: invalid JSON ({error.msg}); expected one JSON object per line (JSONL)."
                ) from None
            if not isinstance(row, dict):
                raise DataFormatError(
                    f"{path}, line {line_number}: found a JSON {type(row).__name__}; expected one JSON object per line (JSONL)."
                )
            rows.append(row)
    return rows


def _read_json(path: Path, records_key: str | None) -> list[tuple[str | None, dict[str, Any]]]:
    try:
        with path.open("r", encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFormatError(
            f"{path}: invalid JSON at line {error.lineno} ({error.msg}); expected one JSON document "
            f"(use a .jsonl suffix or 'format=jsonl' for one object per line)."
        ) from None

    container: Any = document
    if records_key is not None:
        for part in records_key.split("."):
            if not isinstance(container, dict) or part not in container:
                raise DataFormatError(f"{path}: key {records_key!r} (part {part!r}) not found; check 'records=' in the spec.")
            container = container[part]
    elif isinstance(document, dict):
        raise DataFormatError(
            f"{path}: the top level is an object with keys {sorted(document)[:10]}; expected an array of rows, "
            f"or add 'records=<key>' to the spec to name the array or object of rows inside it."
        )

    if isinstance(container, list):
        pairs: list[tuple[str | None, Any]] = [(None, row) for row in container]
    elif isinstance(container, dict):
        pairs = [(str(key), row) for key, row in container.items()]
    else:
        raise DataFormatError(f"{path}: the rows are a JSON {type(container).__name__}; expected an array or object of rows.")
    for index, (_, row) in enumerate(pairs):
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}: row {index} is a JSON {type(row).__name__}; expected every row to be an object.")
    return pairs


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowInvalid, OSError) as error:
        raise DataFormatError(f"{path}: not a readable Parquet file ({error}).") from None
    return table.to_pylist()


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            rows = list(reader)
        except csv.Error as error:
            raise DataFormatError(f"{path}, line {reader.line_num}: invalid CSV ({error}); expected a header row then one row per problem.") from None
    if reader.fieldnames is None:
        raise DataFormatError(f"{path}: empty CSV; expected a header row then one row per problem.")
    for index, row in enumerate(rows):
        if None in row:
            raise DataFormatError(
                f"{path}, row {index + 2}: more values than the {len(reader.fieldnames)} header columns; expected a CSV "
                f"with one value per column (quote values that contain commas)."
            )
    return rows
