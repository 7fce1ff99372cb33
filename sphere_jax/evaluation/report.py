"""Write benchmark results to disk and format them as a table."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sphere_jax.evaluation.harness import BenchmarkResult
from sphere_jax.grading.verdict import REASONS


def benchmark_slug(spec: str) -> str:
    """Return a file-name-safe form of a spec: ``"math:test?level=5"`` -> ``"math_test_level_5"``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_")
    return slug or "benchmark"


def write_results(results: Sequence[BenchmarkResult], output_dir: str | Path) -> list[tuple[Path, Path]]:
    """Write ``<slug>.json`` (the report) and ``<slug>.jsonl`` (one record per problem) per benchmark.

    Returns:
        The ``(report path, records path)`` of each benchmark, in order.

    Raises:
        ValueError: If two benchmarks map to the same file name.
    """
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    slugs = [benchmark_slug(result.report["benchmark"]) for result in results]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"Benchmarks {slugs} would overwrite each other's files; give distinct specs.")
    paths = []
    for slug, result in zip(slugs, results, strict=True):
        report_path = directory / f"{slug}.json"
        records_path = directory / f"{slug}.jsonl"
        report_path.write_text(json.dumps(result.report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        with records_path.open("w", encoding="utf-8") as handle:
            for record in result.records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        paths.append((report_path, records_path))
    return paths


def format_table(reports: Sequence[dict[str, Any]]) -> str:
    """Format one row per benchmark and metric: value, 95% interval, verdict counts, tokens and time."""
    header = ["benchmark", "problems", "metric", "value", "95% CI", *REASONS, "gen tokens", "time s"]
    rows = [header]
    for report in reports:
        verdicts = report["verdicts"]
        for index, (name, metric) in enumerate(report["metrics"].items()):
            first = index == 0
            rows.append(
                [
                    report["benchmark"] if first else "",
                    str(report["num_problems"]) if first else "",
                    name,
                    _percent(metric["value"]),
                    f"{_percent(metric['ci_low'])}-{_percent(metric['ci_high'])}" if metric["value"] is not None else "-",
                    *[str(verdicts.get(reason, 0)) if first else "" for reason in REASONS],
                    str(report["tokens"]["generated"]) if first else "",
                    f"{report['time_s']['total']:.1f}" if first else "",
                ]
            )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
