"""Loading local files, `datasets` datasets and TFDS: field mappings, bad rows and format errors."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from sphere_jax.data import BadRowsError, DataFormatError, SpecError, load_problems

FIXTURES = Path(__file__).parent / "data" / "problems"
BAD_ROWS = f"file:{FIXTURES / 'bad_rows.jsonl'}?question=problem&answer=answer&id=id"


def test_bad_rows_skipped_and_counted():
    problems = load_problems(BAD_ROWS)
    assert [problem.id for problem in problems] == [
        "bad_rows:test:good-1",
        "bad_rows:test:good-2",
        "bad_rows:test:good-3",
        "bad_rows:test:text-gold",
    ]
    assert [problem.answer for problem in problems] == ["5", "4.5", "\\frac{3}{4}", "\\text{4:30 p.m.}"]
    assert problems.text_only_answers == 1
    assert problems.text_only_ids == ["text-gold"]
    assert problems.rows_read == 14
    assert problems.skipped == {
        "missing_question": 2,
        "missing_answer": 2,
        "non_text_field": 3,
        "duplicate_id": 1,
        "unparsable_answer": 2,
    }
    assert problems.skipped_ids["missing_question"] == ["no-question", "blank-question"]
    assert problems.skipped_ids["non_text_field"] == ["list-question", "dict-answer", "bool-answer"]
    assert problems.skipped_ids["unparsable_answer"] == ["broken-latex", "empty-gold"]
    assert problems.num_skipped == 10


def test_bad_rows_logged_with_first_ids(caplog):
    with caplog.at_level(logging.WARNING, logger="sphere_jax.data.loader"):
        load_problems(BAD_ROWS)
    message = caplog.records[-1].getMessage()
    assert "Skipped 10 bad rows" in message
    assert "missing_question: 2 (first ids ['no-question', 'blank-question'])" in message


def test_bad_rows_fatal_in_strict_mode():
    with pytest.raises(BadRowsError, match=r"has 10 bad rows: duplicate_id: 1") as raised:
        load_problems(BAD_ROWS, strict=True)
    assert "bad_rows.jsonl" in str(raised.value)
    assert "'broken-latex'" in str(raised.value)


def test_require_parsable_skips_text_gold():
    problems = load_problems(BAD_ROWS + "&require_parsable=1")
    assert [problem.answer for problem in problems] == ["5", "4.5", "\\frac{3}{4}"]
    assert problems.skipped["unparsable_answer"] == 3
    assert problems.skipped_ids["unparsable_answer"] == ["broken-latex", "text-gold", "empty-gold"]


def test_gsm8k_style_answers_need_hash_line():
    spec = f"file:{FIXTURES / 'gsm8k_style.jsonl'}?question=question&answer=answer&answer_format=gsm8k&name=toy"
    problems = load_problems(spec)
    assert [problem.answer for problem in problems] == ["7", "900"]
    assert [problem.id for problem in problems] == ["toy:test:0", "toy:test:1"]
    assert problems.skipped == {"unparsable_answer": 1}
    assert problems.skipped_ids == {"unparsable_answer": ["2"]}


def test_auto_answer_format_reads_hash_line():
    spec = f"file:{FIXTURES / 'gsm8k_style.jsonl'}?question=question&answer=answer"
    problems = load_problems(spec)
    assert [problem.answer for problem in problems][:2] == ["7", "900"]


def test_aime_style_json_array():
    spec = f"file:{FIXTURES / 'aime_style.json'}?question=problem&answer=answer&id=id&name=aime24"
    problems = load_problems(spec)
    assert [problem.id for problem in problems] == ["aime24:test:toy-2024-I-1", "aime24:test:toy-2024-I-2", "aime24:test:toy-2024-I-3"]
    assert [problem.answer for problem in problems] == ["15", "49", "011"]
    assert problems[0].source == "aime24"


def test_olympiad_style_nested_records():
    spec = (
        f"file:{FIXTURES / 'olympiad_style.json'}?records=data.rows&question=question&answer=final_answer"
        f"&id=uid&level_field=difficulty&subject_field=subfield&split=dev"
    )
    problems = load_problems(spec)
    assert [problem.id for problem in problems] == ["olympiad_style:dev:ob-1", "olympiad_style:dev:ob-2"]
    assert [problem.answer for problem in problems] == ["2, -2", "55"]
    assert [problem.level for problem in problems] == [3, 2]
    assert [problem.subject for problem in problems] == ["Algebra", "Combinatorics"]


def test_json_object_without_records_key():
    spec = f"file:{FIXTURES / 'olympiad_style.json'}?question=question&answer=final_answer"
    with pytest.raises(DataFormatError, match=r"olympiad_style.json: the top level is an object with keys \['data', 'meta'\]"):
        load_problems(spec)


def test_json_records_key_not_found():
    spec = f"file:{FIXTURES / 'olympiad_style.json'}?records=data.items&question=question&answer=final_answer"
    with pytest.raises(DataFormatError, match=r"key 'data.items' \(part 'items'\) not found"):
        load_problems(spec)


def test_csv_with_levels_and_filters():
    base = f"file:{FIXTURES / 'levels.csv'}?question=question&answer=answer&id=id&level_field=level&subject_field=subject"
    problems = load_problems(base)
    assert [problem.id for problem in problems] == ["levels:test:c1", "levels:test:c2", "levels:test:c3", "levels:test:c4", "levels:test:c6"]
    assert [problem.level for problem in problems] == [1, 2, 2, 3, 4]
    assert problems[1].question == "Solve for x: 2x + 3 = 11, giving x."
    assert problems.skipped == {"missing_question": 1}

    filtered = load_problems(base + "&level=2,4&subject=algebra")
    assert [problem.id for problem in filtered] == ["levels:test:c2", "levels:test:c6"]
    assert filtered.filtered_out == 3


def test_parquet_file(tmp_path):
    import pyarrow
    import pyarrow.parquet

    table = pyarrow.table(
        {
            "problem": ["What is 3 squared?", "What is 10 minus 4?", None],
            "answer": ["9", "6", "1"],
            "level": [1, 2, 3],
        }
    )
    path = tmp_path / "toy.parquet"
    pyarrow.parquet.write_table(table, path)
    problems = load_problems(f"file:{path}?question=problem&answer=answer&level_field=level")
    assert [(problem.question, problem.answer, problem.level) for problem in problems] == [
        ("What is 3 squared?", "9", 1),
        ("What is 10 minus 4?", "6", 2),
    ]
    assert problems.skipped == {"missing_question": 1}


def test_corrupt_parquet_names_path(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("question,answer\n1+1,2\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"broken.parquet: not a readable Parquet file"):
        load_problems(f"file:{path}?question=question&answer=answer")


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nowhere" / "aime25.jsonl"
    with pytest.raises(FileNotFoundError, match=r"Problem file not found: .*nowhere/aime25.jsonl \(expected a jsonl file"):
        load_problems(f"file:{path}?question=problem&answer=answer")


def test_truncated_jsonl_names_line():
    with pytest.raises(DataFormatError, match=r"truncated.jsonl, line 2: invalid JSON .*expected one JSON object per line"):
        load_problems(f"file:{FIXTURES / 'truncated.jsonl'}?question=question&answer=answer")


def test_json_array_declared_as_jsonl():
    spec = f"file:{FIXTURES / 'aime_style.json'}?format=jsonl&question=problem&answer=answer"
    with pytest.raises(DataFormatError, match=r"aime_style.json, line 1: .*expected one JSON object per line"):
        load_problems(spec)


def test_csv_with_extra_values():
    with pytest.raises(DataFormatError, match=r"extra_column.csv, row 2: more values than the 2 header columns"):
        load_problems(f"file:{FIXTURES / 'extra_column.csv'}?question=question&answer=answer")


def test_unknown_suffix_needs_format(tmp_path):
    path = tmp_path / "problems.txt"
    path.write_text('{"question": "1+1?", "answer": "2"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"Cannot tell the format of .*problems.txt from its suffix '.txt'"):
        load_problems(f"file:{path}?question=question&answer=answer")
    problems = load_problems(f"file:{path}?question=question&answer=answer&format=jsonl")
    assert [problem.answer for problem in problems] == ["2"]


def test_wrong_field_name_lists_fields():
    spec = f"file:{FIXTURES / 'aime_style.json'}?question=question&answer=answer"
    with pytest.raises(DataFormatError, match=r"no row has the question field 'question'; fields found are \['answer', 'id', 'problem', 'year'\]"):
        load_problems(spec)


def test_file_spec_without_mapping():
    with pytest.raises(SpecError, match=r"does not name the question and answer field"):
        load_problems(f"file:{FIXTURES / 'aime_style.json'}")


def test_dedup_drops_normalized_repeats(tmp_path):
    path = tmp_path / "repeats.jsonl"
    rows = [
        {"q": "What is 2 + 2?", "a": "4"},
        {"q": "what is 2+2 ?", "a": "4"},
        {"q": "What is 3 + 3?", "a": "6"},
        {"q": "WHAT IS 2 + 2?", "a": "4"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    spec = f"file:{path}?question=q&answer=a"
    assert len(load_problems(spec)) == 4
    deduplicated = load_problems(spec + "&dedup=1")
    assert [problem.id for problem in deduplicated] == ["repeats:test:0", "repeats:test:2"]
    assert deduplicated.duplicates_removed == 2
    assert len(load_problems(spec, dedup=True)) == 2


def test_saved_datasets_dataset(tmp_path):
    import datasets

    dataset_dict = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"q": ["What is 5 + 5?"], "a": ["10"]}),
            "test": datasets.Dataset.from_dict({"q": ["What is 6 + 1?", "What is 8 - 3?"], "a": ["7", "5"]}),
        }
    )
    folder = tmp_path / "toy_dataset"
    dataset_dict.save_to_disk(str(folder))

    problems = load_problems(f"hf:{folder}?split=test&question=q&answer=a")
    assert [problem.answer for problem in problems] == ["7", "5"]
    assert problems[0].id == "toy_dataset:test:0"
    train = load_problems(f"hf:{folder}?split=train&question=q&answer=a")
    assert [problem.answer for problem in train] == ["10"]
    with pytest.raises(DataFormatError, match=r"has no split 'validation'; its splits are \['test', 'train'\]"):
        load_problems(f"hf:{folder}?split=validation&question=q&answer=a")


def test_hf_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is not a dataset saved with save_to_disk"):
        load_problems(f"hf:{tmp_path}?question=q&answer=a")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None, reason="tensorflow-datasets is installed")
def test_tfds_without_package_says_how_to_install():
    with pytest.raises(ImportError, match=r"needs tensorflow-datasets; install it with 'pip install sphere_jax\[tfds\]'"):
        load_problems("tfds:gsm8k?split=test&question=question&answer=answer")
