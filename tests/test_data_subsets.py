"""Deterministic subsets, filters and de-duplication."""

from __future__ import annotations

from sphere_jax.data import Problem, load_problems
from sphere_jax.data.subsets import deduplicate, filter_problems, normalize_question, select_subset


def make_problems(count: int) -> list[Problem]:
    return [
        Problem(id=f"toy:test:{index}", question=f"What is {index} + 1?", answer=str(index + 1), source="toy", split="test")
        for index in range(count)
    ]


def test_limit_without_seed_takes_first():
    problems = make_problems(10)
    assert [problem.id for problem in select_subset(problems, 3, None)] == ["toy:test:0", "toy:test:1", "toy:test:2"]


def test_limit_over_size_keeps_all():
    problems = make_problems(4)
    assert select_subset(problems, 10, 3) == problems
    assert select_subset(problems, None, 3) == problems


def test_seeded_subset_is_deterministic_and_nested():
    problems = make_problems(200)
    first = select_subset(problems, 20, seed=5)
    again = select_subset(problems, 20, seed=5)
    smaller = select_subset(problems, 10, seed=5)
    other_seed = select_subset(problems, 20, seed=6)
    assert first == again
    assert len(first) == 20
    assert len({problem.id for problem in first}) == 20
    assert set(smaller) <= set(first)
    assert first != other_seed
    assert first != problems[:20]
    indices = [int(problem.id.rsplit(":", 1)[1]) for problem in first]
    assert indices == sorted(indices)


def test_load_problems_subset_on_real_gsm8k():
    first = load_problems("gsm8k:test", limit=100)
    assert len(first) == 100
    assert first[0].answer == "18"
    assert [problem.id for problem in first] == [f"gsm8k:test:{index}" for index in range(100)]

    sampled = load_problems("gsm8k:test", limit=100, seed=0)
    assert [problem.id for problem in sampled] == [problem.id for problem in load_problems("gsm8k:test?limit=100&seed=0")]
    assert [problem.id for problem in sampled] != [problem.id for problem in first]


def test_keyword_limit_overrides_spec():
    assert len(load_problems("gsm8k:test?limit=5", limit=7)) == 7


def test_filter_unknown_level_fails_active_filter():
    problems = [
        Problem(id="a", question="q1", answer="1", source="s", split="t", level=5, subject="Algebra"),
        Problem(id="b", question="q2", answer="2", source="s", split="t", level=None, subject=None),
        Problem(id="c", question="q3", answer="3", source="s", split="t", level=4, subject="Geometry"),
    ]
    assert [problem.id for problem in filter_problems(problems, frozenset({5}), None)] == ["a"]
    assert [problem.id for problem in filter_problems(problems, None, frozenset({"geometry"}))] == ["c"]
    assert [problem.id for problem in filter_problems(problems, None, None)] == ["a", "b", "c"]


def test_normalize_question():
    assert normalize_question("  What IS 2+2?\n") == "what is 2 2"
    assert normalize_question("What is 2 + 2 ?") == "what is 2 2"


def test_deduplicate_keeps_first():
    problems = make_problems(3) + [
        Problem(id="toy:test:copy", question="what is 1 + 1", answer="2", source="toy", split="test")
    ]
    assert [problem.id for problem in deduplicate(problems)] == ["toy:test:0", "toy:test:1", "toy:test:2"]
