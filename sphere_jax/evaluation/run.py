"""Run an evaluation end to end: evaluate, write the reports and records, print the table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sphere_jax.evaluation.config import EvalConfig
from sphere_jax.evaluation.generator import Generator
from sphere_jax.evaluation.harness import BenchmarkResult, evaluate
from sphere_jax.evaluation.report import benchmark_slug, format_table, write_results
from sphere_jax.grading import AnswerChecker

logger = logging.getLogger(__name__)


def run_evaluation(
    config: EvalConfig,
    generator: Generator,
    tokenizer: Any,
    output_dir: str | Path,
    *,
    checker: AnswerChecker | None = None,
) -> list[BenchmarkResult]:
    """Evaluate every benchmark, write ``<slug>.json`` and ``<slug>.jsonl`` to ``output_dir`` and print a table.

    Each benchmark's files are written as soon as it is done, so an error in a later one keeps them.

    The answer checker starts worker processes with the 'spawn' method, which re-imports the
    main module, so a script that calls this must guard its entry point with
    ``if __name__ == "__main__":``.

    Args:
        config: Evaluation settings.
        generator: The sampler.
        tokenizer: A tokenizer with the model's chat template.
        output_dir: Folder for the reports and records; created if missing.
        checker: An open checker to reuse; None opens one for this run.

    Returns:
        The results, in the order of ``config.benchmarks``.
    """
    slugs = [benchmark_slug(spec) for spec in config.benchmarks]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"Benchmarks {slugs} would overwrite each other's files; give distinct specs.")

    def write(result: BenchmarkResult) -> None:  # each benchmark's files as soon as it is done
        for report_path, records_path in write_results([result], output_dir):
            logger.info("Wrote %s and %s", report_path, records_path)

    results = evaluate(config, generator, tokenizer, checker=checker, on_result=write)
    print(format_table([result.report for result in results]))
    return results
