"""Evaluate a sampler on math benchmarks: pass@1, pass@k and maj@k with confidence intervals.

The harness only needs an object with the ``Generator.generate`` method and a tokenizer with a
chat template, so any sampler can be evaluated.
"""

from sphere_jax.evaluation.config import EvalConfig
from sphere_jax.evaluation.generator import GeneratedText, Generator
from sphere_jax.evaluation.harness import BenchmarkResult, evaluate, evaluate_benchmark
from sphere_jax.evaluation.metrics import majority_vote, mean_interval, pass_at_k, wilson_interval
from sphere_jax.evaluation.prompts import PromptConfig, build_prompt, render_prompt
from sphere_jax.evaluation.report import benchmark_slug, format_table, write_results
from sphere_jax.evaluation.run import run_evaluation

__all__ = [
    "BenchmarkResult",
    "EvalConfig",
    "GeneratedText",
    "Generator",
    "PromptConfig",
    "benchmark_slug",
    "build_prompt",
    "evaluate",
    "evaluate_benchmark",
    "format_table",
    "majority_vote",
    "mean_interval",
    "pass_at_k",
    "render_prompt",
    "run_evaluation",
    "wilson_interval",
    "write_results",
]
