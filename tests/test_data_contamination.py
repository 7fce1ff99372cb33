"""13-gram decontamination on handmade and real problem sets."""

from __future__ import annotations

import pytest

from sphere_jax.data import Problem, find_contamination, load_problems
from sphere_jax.data.contamination import remove_contaminated, word_ngrams, words


def problem(problem_id: str, question: str) -> Problem:
    return Problem(id=problem_id, question=question, answer="1", source="toy", split="test")


def test_words_drop_punctuation_and_case():
    assert words("Janet's ducks lay 16 eggs, per day!") == ["janet", "s", "ducks", "lay", "16", "eggs", "per", "day"]


def test_word_ngrams_count():
    text = " ".join(f"w{index}" for index in range(15))
    grams = word_ngrams(text, 13)
    assert grams == {" ".join(f"w{index}" for index in range(start, start + 13)) for start in range(3)}
    assert word_ngrams("only five words here now", 13) == set()


def test_shared_thirteen_gram_is_flagged():
    shared = "a farmer has twelve cows and each cow gives three litres of milk every morning"
    evaluation = [problem("eval:0", "Unrelated question about circles and their radius."), problem("eval:1", shared + ". How much milk?")]
    train = [
        problem("train:0", "Yesterday " + shared + " before noon."),
        problem("train:1", "A farmer has twelve cows and each cow gives three litres of juice."),  # 12 shared words only
        problem("train:2", "Completely different text about trains leaving stations at noon today."),
    ]
    matches = find_contamination(train, evaluation, n=13)
    assert [match.train_id for match in matches] == ["train:0"]
    assert matches[0].eval_id == "eval:1"
    assert matches[0].shared_ngrams == len(word_ngrams(shared, 13))
    assert matches[0].example_ngram in word_ngrams(shared, 13)
    assert matches[0].all_eval_ids == ("eval:1",)
    assert [item.id for item in remove_contaminated(train, matches)] == ["train:1", "train:2"]


def test_shorter_ngram_finds_more():
    evaluation = [problem("eval:0", "each cow gives three litres of milk")]
    train = [problem("train:0", "Here each cow gives three litres of milk daily.")]
    assert find_contamination(train, evaluation, n=13) == []
    assert [match.train_id for match in find_contamination(train, evaluation, n=5)] == ["train:0"]


def test_invalid_ngram_length():
    with pytest.raises(ValueError, match=r"n-gram length must be at least 1, got 0"):
        find_contamination([], [], n=0)


def test_gsm_hard_overlaps_gsm8k_test():
    # GSM-Hard rewrites the numbers of GSM8K test problems, so most keep long runs of words.
    gsm8k_test = load_problems("gsm8k:test").problems
    gsm_hard = load_problems("gsm_hard:test").problems
    matches = find_contamination(gsm_hard, gsm8k_test)
    by_id = {match.train_id: match for match in matches}
    assert len(matches) > 0.9 * len(gsm_hard)
    assert by_id["gsm_hard:test:0"].eval_id == "gsm8k:test:0"
