"""Evaluate a generator on problem sets: prompts, sampling, answer checking and metrics."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sphere_jax.data import Problem, ProblemSet, load_problems
from sphere_jax.evaluation.config import EvalConfig
from sphere_jax.evaluation.generator import GeneratedText, Generator
from sphere_jax.evaluation.prompts import build_prompt
from sphere_jax.evaluation.scoring import ProblemScore, score_problem, summarize
from sphere_jax.grading import AnswerChecker, Verdict
from sphere_jax.grading.extract import extract_answer_or_fallback

logger = logging.getLogger(__name__)

# Verdict reason for a completion in which no final answer was found; the checker is not called.
NO_ANSWER_REASON = "unparsable"


@dataclasses.dataclass
class BenchmarkResult:
    """The outcome of one benchmark.

    Attributes:
        report: JSON-ready summary (settings, metrics with intervals, verdict counts, tokens, time).
        records: One JSON-ready record per problem (prompt, outputs, answers, gold, verdicts).
    """

    report: dict[str, Any]
    records: list[dict[str, Any]]


def evaluate_benchmark(
    problem_set: ProblemSet,
    generator: Generator,
    tokenizer: Any,
    config: EvalConfig,
    checker: AnswerChecker,
) -> BenchmarkResult:
    """Generate completions for every problem, check their answers and compute the metrics.

    Args:
        problem_set: The problems, as ``load_problems`` returns them.
        generator: The sampler.
        tokenizer: A ``transformers`` tokenizer with the model's chat template.
        config: Evaluation settings.
        checker: An open answer checker.

    Returns:
        The report and the per-problem records.

    Raises:
        RuntimeError: If the generator returns the wrong number of prompts or completions.
    """
    problems = problem_set.problems
    prompts = [build_prompt(tokenizer, config.prompt, problem) for problem in problems]
    logger.info("Evaluating %s: %d problems x %d samples", problem_set.spec, len(problems), config.num_samples)

    started = time.perf_counter()
    completions = _generate_all(generator, prompts, config)
    generation_s = time.perf_counter() - started

    started = time.perf_counter()
    answers = [
        [
            extract_answer_or_fallback(sample.text, config.answer_fallback, finished=sample.finish_reason != "length")
            for sample in samples
        ]
        for samples in completions
    ]
    verdicts = _check_all(checker, problems, answers)
    grading_s = time.perf_counter() - started

    scores: list[ProblemScore] = []
    records: list[dict[str, Any]] = []
    for problem, prompt, samples, sample_answers, sample_verdicts in zip(
        problems, prompts, completions, answers, verdicts, strict=True
    ):
        score = score_problem(problem, sample_answers, sample_verdicts, config.ks, majority=config.mode == "sample")
        scores.append(score)
        records.append(_record(problem, prompt, samples, sample_answers, sample_verdicts, score))

    prompt_tokens = sum(len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) for prompt in prompts)
    generated = [sample for samples in completions for sample in samples]
    report = {
        "benchmark": problem_set.spec,
        "source": problem_set.source,
        "split": problem_set.split,
        "settings": config.to_dict(),
        "data": problem_set.summary(),
        **summarize(scores, config.mode, config.ks),
        "tokens": {
            "prompt": prompt_tokens,
            "generated": sum(sample.num_tokens for sample in generated),
            "mean_generated_per_sample": (
                sum(sample.num_tokens for sample in generated) / len(generated) if generated else 0.0
            ),
            "truncated_samples": sum(sample.finish_reason == "length" for sample in generated),
        },
        "time_s": {"generation": generation_s, "grading": grading_s, "total": generation_s + grading_s},
    }
    return BenchmarkResult(report=report, records=records)


def evaluate(
    config: EvalConfig,
    generator: Generator,
    tokenizer: Any,
    *,
    checker: AnswerChecker | None = None,
    on_result: Callable[[BenchmarkResult], None] | None = None,
) -> list[BenchmarkResult]:
    """Load and evaluate every benchmark of ``config`` with one answer checker.

    Args:
        config: Evaluation settings.
        generator: The sampler.
        tokenizer: A tokenizer with the model's chat template.
        checker: An open checker to reuse; None opens one with the config's workers and deadline.
        on_result: Called with each benchmark's result as soon as it is done, for example to write
            it, so a failure in a later benchmark loses nothing already evaluated.
    """
    problem_sets = [
        load_problems(spec, limit=config.limit, seed=config.subset_seed, strict=config.strict_data)
        for spec in config.benchmarks
    ]

    def evaluate_all(opened: AnswerChecker) -> list[BenchmarkResult]:
        results = []
        for problems in problem_sets:
            result = evaluate_benchmark(problems, generator, tokenizer, config, opened)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results

    if checker is not None:
        return evaluate_all(checker)
    with AnswerChecker(workers=config.checker_workers, deadline_s=config.checker_deadline_s) as opened:
        return evaluate_all(opened)


def _generate_all(generator: Generator, prompts: Sequence[str], config: EvalConfig) -> list[list[GeneratedText]]:
    completions: list[list[GeneratedText]] = []
    for batch_index, start in enumerate(range(0, len(prompts), config.batch_size)):
        batch = list(prompts[start : start + config.batch_size])
        outputs = generator.generate(
            batch,
            n=config.num_samples,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed + batch_index,
        )
        if len(outputs) != len(batch) or any(len(samples) != config.num_samples for samples in outputs):
            shape = [len(samples) for samples in outputs]
            raise RuntimeError(
                f"{type(generator).__name__}.generate returned completions per prompt {shape} for {len(batch)} "
                f"prompts; expected {len(batch)} lists of {config.num_samples}."
            )
        completions.extend(outputs)
        logger.info("Generated %d/%d prompts", min(start + config.batch_size, len(prompts)), len(prompts))
    return completions


def _check_all(
    checker: AnswerChecker, problems: Sequence[Problem], answers: Sequence[Sequence[str | None]]
) -> list[list[Verdict]]:
    """Check every extracted answer in one batch; answers that were not found get ``unparsable``."""
    pairs = []
    positions = []
    for problem_index, (problem, sample_answers) in enumerate(zip(problems, answers, strict=True)):
        for sample_index, answer in enumerate(sample_answers):
            if answer is not None:
                pairs.append((problem.answer, answer))
                positions.append((problem_index, sample_index))

    verdicts: list[list[Verdict]] = [
        [Verdict(equal=False, reason=NO_ANSWER_REASON) for _ in sample_answers] for sample_answers in answers
    ]
    for (problem_index, sample_index), verdict in zip(positions, checker.check_many(pairs), strict=True):
        verdicts[problem_index][sample_index] = verdict
    return verdicts


def _record(
    problem: Problem,
    prompt: str,
    samples: Sequence[GeneratedText],
    answers: Sequence[str | None],
    verdicts: Sequence[Verdict],
    score: ProblemScore,
) -> dict[str, Any]:
    return {
        "id": problem.id,
        "source": problem.source,
        "split": problem.split,
        "level": problem.level,
        "subject": problem.subject,
        "question": problem.question,
        "gold": problem.answer,
        "prompt": prompt,
        "samples": [
            {
                "output": sample.text,
                "extracted_answer": answer,
                "equal": verdict.equal,
                "reason": verdict.reason,
                "num_tokens": sample.num_tokens,
                "finish_reason": sample.finish_reason,
            }
            for sample, answer, verdict in zip(samples, answers, verdicts, strict=True)
        ],
        "num_correct": score.num_correct,
        "majority_answer": score.majority_answer,
        "metrics": dict(score.metrics),
    }
