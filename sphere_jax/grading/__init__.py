"""Safe, time-bounded checking of math answers against gold answers.

`extract_answer` takes the final answer out of model output, `check_equal` compares two
answers in this process, and `AnswerChecker` compares batches in worker processes with a
deadline per check. No function here evaluates its input as code.
"""

from sphere_jax.grading.checker import AnswerChecker
from sphere_jax.grading.equivalence import check_equal, is_parsable_answer
from sphere_jax.grading.extract import extract_answer, gsm8k_gold, last_boxed, math_gold
from sphere_jax.grading.verdict import Verdict

__all__ = [
    "AnswerChecker",
    "Verdict",
    "check_equal",
    "extract_answer",
    "gsm8k_gold",
    "is_parsable_answer",
    "last_boxed",
    "math_gold",
]
