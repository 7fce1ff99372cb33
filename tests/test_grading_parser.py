"""Tests for normalisation, tokenizing and parsing of answers, and for parser safety."""

import builtins
import re
from pathlib import Path

import pytest
import sympy

import sphere_jax.grading
from sphere_jax.grading import check_equal, is_parsable_answer
from sphere_jax.grading.forms import Collection, Interval, IntervalUnion, Matrix, Relation, Text
from sphere_jax.grading.lexer import LexError, tokenize
from sphere_jax.grading.normalize import MAX_ANSWER_CHARS, normalize_answer, parse_plain_number
from sphere_jax.grading.parser import MAX_EXACT_BITS, PLUS_MINUS, ParseError, is_oversized, parse_answer

x, n = sympy.symbols("x n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\$32,\!348", "32348"),
        (r"10,\!080", "10080"),
        (r"15\mbox{ cm}^2", "15"),
        (r"\text{(B)}", "B"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"( 3, \frac{\pi}{2} )"),
        ("$18", "18"),
        (r"\boxed{18.00}", "18.00"),
        ("#### 1,000", "1000"),
        (r"x \in [-2,7]", "[-2,7]"),
        (r"7, -2, \text{ and } -5", "7, -2, -5"),
        (r"30^\circ", "30"),
        (r"7\%", "7"),
        ("12 apples", "12"),
        ("3 pi", "3 pi"),
        (r"\dfrac{9}{7}", r"\frac{9}{7}"),
        ("$\\frac{1}{2}$.", r"\frac{1}{2}"),
        ("The answer is 42.", "42"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_rejects_long_answer():
    with pytest.raises(ValueError, match="longer than the limit"):
        normalize_answer("1+" * MAX_ANSWER_CHARS)


def test_plain_number_kinds():
    assert parse_plain_number("-12").value == -12
    assert parse_plain_number("-12").inexact is False
    assert parse_plain_number(".5").inexact is True
    assert parse_plain_number(r"\frac{3}{4}").value * 4 == 3
    assert parse_plain_number("3/0") is None
    assert parse_plain_number(r"\sqrt{2}") is None


def test_tokenize_rejects_code_characters():
    for text in ["__import__('os')", 'exec("x")', "a @ b", "x # y", "`ls`", "a?b"]:
        with pytest.raises(LexError):
            tokenize(text)


def test_tokenize_splits_letters():
    names = [token.text for token in tokenize("xsinx") if token.kind == "name"]
    assert names == ["x", "sin", "x"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\sqrt(2)", sympy.sqrt(2)),
        (r"\sqrt2", sympy.sqrt(2)),
        (r"\frac12", sympy.Rational(1, 2)),
        (r"\frac9{19}", sympy.Rational(9, 19)),
        (r"137 \frac{1}{2}", sympy.Rational(275, 2)),
        (r"2\frac{x}{3}", 2 * x / 3),
        ("sin(x)**2", sympy.sin(x) ** 2),
        (r"\sin^2 x", sympy.sin(x) ** 2),
        (r"\sin^{-1}(1/2)", sympy.pi / 6),
        (r"\log_2 8", sympy.Integer(3)),
        ("|x-1|", sympy.Abs(x - 1)),
        (r"\lfloor 2.5 \rfloor", sympy.Integer(2)),
        ("2 + 7i", 2 + 7 * sympy.I),
        (r"e^{i\pi}", sympy.Integer(-1)),
        (r"\binom{5}{2}", sympy.Integer(10)),
        ("5!", sympy.Integer(120)),
        ("1:2", sympy.Rational(1, 2)),
        (r"\pm 3", 3 * PLUS_MINUS),
    ],
)
def test_parse_scalars(text, expected):
    assert parse_answer(text) == expected


def test_parse_decimal_is_float():
    value = parse_answer("18.00")
    assert isinstance(value, sympy.Float)
    assert float(value) == 18.0


def test_parse_structured_forms():
    assert parse_answer("(1, 2)") == Collection((1, 2), "tuple")
    assert parse_answer("1, 2") == Collection((1, 2), "list")
    assert parse_answer(r"\{1, 2\}") == Collection((1, 2), "set")
    assert parse_answer("(3,4]") == Interval(3, 4, False, True)
    union = parse_answer(r"(-\infty, 2) \cup (3, \infty)")
    assert union == IntervalUnion((Interval(-sympy.oo, 2, False, False), Interval(3, sympy.oo, False, False)))
    matrix = parse_answer(r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}")
    assert matrix == Matrix(((1, 2), (3, 4)))
    assert parse_answer("3 > x") == Relation((3, x), (">",))
    assert parse_answer(r"\text{Evelyn}") == Text("evelyn")


@pytest.mark.parametrize(
    "text",
    ["5 +", r"\frac{1}{2", r"\cdots", "(1, 2, 3]", r"\begin{vmatrix} 1 \end{vmatrix}", r"\input{x}", "2 3", "(-3)!"],
)
def test_parse_errors(text):
    with pytest.raises((ParseError, LexError)):
        parse_answer(text)


def test_power_tower_stays_unevaluated():
    tower = parse_answer(r"2^{2^{2^{2^{2^{2}}}}}")
    assert is_oversized(tower)
    assert isinstance(tower, sympy.Pow)


def test_power_below_limit_is_exact():
    value = parse_answer("2^{1000}")
    assert value == sympy.Integer(2) ** 1000
    assert not is_oversized(value)
    assert MAX_EXACT_BITS > 1000


def test_is_parsable_answer_on_gold_formats():
    assert is_parsable_answer(r"\left( 3, \frac{\pi}{2} \right)")
    assert is_parsable_answer("#### 1,000")
    assert is_parsable_answer(r"\text{Evelyn}")
    assert not is_parsable_answer("")
    assert not is_parsable_answer("???")


def test_grading_source_has_no_eval():
    # The parser is the only way from text to sympy: no eval, exec, sympify, parse_expr or
    # lambdify (which execs generated code) anywhere in the package.
    folder = Path(sphere_jax.grading.__file__).parent
    forbidden = re.compile(r"(?<![\w.])(?:eval|exec|compile)\(|sympify\(|sympy_parser|lambdify\(|\bS\(")
    for path in folder.glob("*.py"):
        found = forbidden.findall(path.read_text())
        assert found == [], f"{path.name} uses {found}"


def test_check_never_calls_eval(monkeypatch):
    calls = []

    def recording_eval(*args, **kwargs):
        calls.append(args)
        raise AssertionError("eval was called")

    monkeypatch.setattr(builtins, "eval", recording_eval)
    monkeypatch.setattr(sympy, "sympify", recording_eval)
    monkeypatch.setattr(sympy.parsing.sympy_parser, "parse_expr", recording_eval)
    pairs = [
        ("sin(x)**2", r"\sin^2 x"),
        ("__import__('os').system('echo hi')", "0"),
        (r"\sqrt{1/n}", r"\frac{1}{\sqrt{n}}"),
        ("x < 3", "3 > x"),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "(1, 2)"),
    ]
    verdicts = [check_equal(gold, prediction).reason for gold, prediction in pairs]
    assert verdicts == ["equal", "unparsable", "equal", "equal", "equal"]
    assert calls == []
