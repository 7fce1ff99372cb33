"""The dataset spec naming scheme: parsing and its errors."""

from __future__ import annotations

import pytest

from sphere_jax.data import BUILTIN_SETS, AnswerFormat, SpecError, parse_spec

NAMES = frozenset(BUILTIN_SETS)


@pytest.mark.parametrize(
    ("text", "kind", "name", "split", "location"),
    [
        ("gsm8k:train", "builtin", "gsm8k", "train", None),
        ("math500:test", "builtin", "math500", "test", None),
        ("file:path/to/set.jsonl?question=problem&answer=solution", "file", "set", "test", "path/to/set.jsonl"),
        ("file:/data/aime24.parquet?question=problem&answer=answer&name=aime&split=2024", "file", "aime", "2024", "/data/aime24.parquet"),
        ("hf:/cache/gsm8k_saved?split=train&question=question&answer=answer", "hf", "gsm8k_saved", "train", "/cache/gsm8k_saved"),
        ("hf:openai/gsm8k?config=main&question=question&answer=answer", "hf", "gsm8k", "test", "openai/gsm8k"),
        ("tfds:math_dataset?question=q&answer=a", "tfds", "math_dataset", "test", "math_dataset"),
    ],
)
def test_spec_parts(text, kind, name, split, location):
    spec = parse_spec(text, NAMES)
    assert (spec.kind, spec.name, spec.split, spec.location) == (kind, name, split, location)
    assert spec.text == text


def test_spec_filters():
    spec = parse_spec("math:test?level=4,5&subject=Algebra,Number%20Theory&limit=100&seed=7&dedup=1", NAMES)
    assert spec.levels == frozenset({4, 5})
    assert spec.subjects == frozenset({"algebra", "number theory"})
    assert spec.limit == 100
    assert spec.seed == 7
    assert spec.dedup is True
    assert spec.options == {}


def test_spec_without_filters():
    spec = parse_spec("gsm8k:test", NAMES)
    assert (spec.levels, spec.subjects, spec.limit, spec.seed, spec.dedup) == (None, None, None, None, False)


def test_field_mapping_from_query():
    spec = parse_spec("file:svamp.csv?question=Body,Question&answer=Answer&answer_format=raw&id=ID&subject_field=Type", NAMES)
    mapping = spec.field_mapping()
    assert mapping.question == ("Body", "Question")
    assert mapping.answer == "Answer"
    assert mapping.answer_format is AnswerFormat.RAW
    assert mapping.id == "ID"
    assert mapping.subject == "Type"
    assert mapping.level is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gsm8k", r"expected '<set>:<split>'"),
        ("aime:test", r"Unknown dataset 'aime' .* bundled sets are asdiv, champ, gsm8k"),
        ("gsm8k:", r"has no split; write for example 'gsm8k:test'"),
        ("gsm8k:test?question=q", r"unknown query keys \['question'\]; keys valid for builtin specs"),
        ("math:test?level=five", r"level='five'; expected integers separated by commas"),
        ("math:test?limit=-3", r"limit='-3'; expected a non-negative integer"),
        ("math:test?seed=x", r"seed='x'; expected a non-negative integer"),
        ("math:test?dedup=maybe", r"dedup='maybe'; expected 1 or 0"),
        ("math:test?level=5&level=4", r"repeats the query key 'level'"),
        ("file:?question=q&answer=a", r"has no path after 'file:'"),
        ("hf:x?records=rows&question=q&answer=a", r"unknown query keys \['records'\]"),
    ],
)
def test_invalid_specs(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text, NAMES)


def test_unknown_answer_format():
    spec = parse_spec("file:x.jsonl?question=q&answer=a&answer_format=latex", NAMES)
    with pytest.raises(SpecError, match=r"answer_format='latex'; valid formats are raw, gsm8k, boxed, strip_unit, auto"):
        spec.field_mapping()
