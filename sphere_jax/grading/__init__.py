"""Safe, time-bounded checking of math answers against gold answers."""

from sphere_jax.grading.extract import extract_answer, gsm8k_gold, last_boxed, math_gold

__all__ = ["extract_answer", "gsm8k_gold", "last_boxed", "math_gold"]
