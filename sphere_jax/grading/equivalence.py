"""Decide whether two parsed answers are equal, and the in-process `check_equal`.

Rules, by answer kind:
- Exact numbers (no decimal point anywhere) are compared exactly: rationals by value, other
  closed forms by a 60-digit evaluation of their difference, which must be below 1e-45 of
  their size and not proven nonzero by sympy. So `1/2004!` and `1/2006!` are not equal.
- Infinities are equal only to the same infinity, and a power or factorial too large to
  compute (see `parser.MAX_EXACT_BITS`) only to the same expression.
- A number with a decimal point on either side is compared with a relative tolerance.
- Expressions in symbols are equal when their expanded difference is zero, or when they agree
  at 3 or more of 5 random positive points and differ at no point with negative coordinates
  where both are real. `sympy.simplify` of the difference decides when fewer than 3 points give
  finite values. The numeric check runs before simplify because it rejects most unequal pairs
  in milliseconds, while simplify can take seconds.
- Tuples compare in order, sets and bare comma lists without order, intervals by ends and
  brackets, matrices entry by entry.
- Relations are equal to themselves with the sides swapped and the operator mirrored
  (`3 > x` equals `x < 3`, `x > 3` does not); equations also match after moving terms across
  (`y = 2x` equals `2x - y = 0`) or scaling by a constant.
- `x = 5` is compared as 5 against an answer that is not a relation.
- `a \\pm b` is the set {a + b, a - b}.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import mpmath
import sympy

from sphere_jax.grading.forms import Answer, Collection, Interval, IntervalUnion, Matrix, Relation, Text
from sphere_jax.grading.lexer import LexError
from sphere_jax.grading.normalize import AnswerTooLongError, normalize_answer, parse_plain_number, plain_numbers_equal
from sphere_jax.grading.parser import PLUS_MINUS, ParseError, is_oversized, parse_normalized
from sphere_jax.grading.verdict import EQUAL, NOT_EQUAL, UNPARSABLE, Verdict

logger = logging.getLogger(__name__)

# Digits of the numeric evaluations.
_DIGITS = 60
# Exact closed forms whose difference is below this fraction of their size, and that sympy
# cannot prove unequal, are taken as equal.
_EXACT_RELATIVE_EPSILON = mpmath.mpf("1e-45")
# Agreement needed at random points between two exact expressions in symbols.
_POINT_RELATIVE_EPSILON = mpmath.mpf("1e-20")
_RANDOM_POINTS = 5
_MIN_AGREEING_POINTS = 3
_SIGNED_POINTS = 3
_INFINITIES = (sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)
_MIRRORED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "!=": "!="}

_PARSE_ERRORS = (ParseError, LexError, AnswerTooLongError, RecursionError, ValueError, TypeError, ArithmeticError)


def _to_mpc(expr: sympy.Expr, subs: dict | None = None) -> mpmath.mpc | None:
    """Evaluate `expr` to a complex mpmath number, or return None if it does not evaluate."""
    value = expr.evalf(_DIGITS, subs=subs) if subs else expr.evalf(_DIGITS)
    if not value.is_number:
        return None
    real, imaginary = value.as_real_imag()
    try:
        with mpmath.workdps(_DIGITS):
            return mpmath.mpc(mpmath.mpf(sympy.Float(real, _DIGITS)), mpmath.mpf(sympy.Float(imaginary, _DIGITS)))
    except (TypeError, ValueError):
        return None


def _finite(value: mpmath.mpc | None) -> bool:
    return value is not None and mpmath.isfinite(value.real) and mpmath.isfinite(value.imag)


def _close(a: mpmath.mpc, b: mpmath.mpc, relative: mpmath.mpf) -> bool:
    with mpmath.workdps(_DIGITS):
        difference = abs(a - b)
        scale = max(abs(a), abs(b))
        return difference <= relative * scale or difference == 0


class _Comparer:
    def __init__(self, rel_tol: float) -> None:
        self.rel_tol = mpmath.mpf(rel_tol)

    # Scalars.

    def scalars(self, a: sympy.Expr, b: sympy.Expr) -> bool:
        if a == b:
            return True
        if is_oversized(a) or is_oversized(b):
            # NOTE: values too large to compute exactly are equal only when written alike, because
            # sympy 1.14 did not finish evaluating 2^(2^200) - 5 within 20 s (measured).
            return False
        if a.has(*_INFINITIES) or b.has(*_INFINITIES):
            return False
        inexact = a.has(sympy.Float) or b.has(sympy.Float)
        symbols = a.free_symbols | b.free_symbols
        if not symbols:
            return self.numbers(a, b, inexact)
        return self.expressions(a, b, symbols, inexact)

    def numbers(self, a: sympy.Expr, b: sympy.Expr, inexact: bool) -> bool:
        if a.is_Rational and b.is_Rational:
            return False  # distinct rationals; `a == b` was checked
        if inexact:
            value_a, value_b = _to_mpc(a), _to_mpc(b)
            if not (_finite(value_a) and _finite(value_b)):
                return False
            return _close(value_a, value_b, self.rel_tol)
        difference = sympy.expand(a - b)
        if difference == 0:
            return True
        if difference.is_Rational:
            return False
        value_a, value_b = _to_mpc(a), _to_mpc(b)
        if not (_finite(value_a) and _finite(value_b)):
            return False
        if not _close(value_a, value_b, _EXACT_RELATIVE_EPSILON):
            return False
        # Equal to 45 digits: accept unless sympy proves a nonzero difference.
        return difference.equals(0) is not False

    def expressions(self, a: sympy.Expr, b: sympy.Expr, symbols: set, inexact: bool) -> bool:
        if sympy.expand(a - b) == 0:
            return True
        ordered = sorted(symbols, key=lambda symbol: symbol.name)
        tolerance = self.rel_tol if inexact else _POINT_RELATIVE_EPSILON
        generator = random.Random(len(ordered))
        agreeing = 0
        for _ in range(_RANDOM_POINTS):
            # Positive non-integer points: expressions such as sqrt(1/n) and 1/sqrt(n) agree
            # only for positive n, and integers hit the jumps of floor and ceiling.
            point = {symbol: sympy.Rational(generator.randint(1000, 3000), 997) for symbol in ordered}
            value_a, value_b = _to_mpc(a, point), _to_mpc(b, point)
            finite_a, finite_b = _finite(value_a), _finite(value_b)
            if finite_a != finite_b:
                return False
            if not finite_a:
                continue
            if not _close(value_a, value_b, tolerance):
                return False
            agreeing += 1
        for _ in range(_SIGNED_POINTS):
            # Points with negative coordinates separate |x| from x; they count only where both
            # sides are real, since principal roots and logs of negatives differ by branch.
            point = {symbol: sympy.Rational(generator.choice((-1, 1)) * generator.randint(1000, 3000), 997)
                     for symbol in ordered}
            point[ordered[0]] = -abs(point[ordered[0]])
            value_a, value_b = _to_mpc(a, point), _to_mpc(b, point)
            if not (_finite(value_a) and _finite(value_b)) or value_a.imag != 0 or value_b.imag != 0:
                continue
            if not _close(value_a, value_b, tolerance):
                return False
        if agreeing >= _MIN_AGREEING_POINTS:
            return True
        return sympy.simplify(a - b) == 0

    def proportional(self, a: sympy.Expr, b: sympy.Expr) -> bool:
        """Return whether a = c*b for a nonzero constant c (equations scaled by c)."""
        if b == 0 or a == 0:
            return False
        ratio = sympy.cancel(a / b)
        if ratio.free_symbols:
            return False
        return ratio != 0 and ratio.is_finite is not False

    # Structured answers.

    def answers(self, gold: Answer, prediction: Answer) -> bool:
        gold = _expand_plus_minus(gold)
        prediction = _expand_plus_minus(prediction)
        if isinstance(gold, Relation) or isinstance(prediction, Relation):
            return self.with_relation(gold, prediction)
        if isinstance(gold, Text) or isinstance(prediction, Text):
            return isinstance(gold, Text) and isinstance(prediction, Text) and gold.text == prediction.text
        if isinstance(gold, sympy.Expr) and isinstance(prediction, sympy.Expr):
            return self.scalars(gold, prediction)
        if isinstance(gold, (Interval, IntervalUnion)) or isinstance(prediction, (Interval, IntervalUnion)):
            return self.interval_sets(gold, prediction)
        if isinstance(gold, Matrix) or isinstance(prediction, Matrix):
            return self.matrices(gold, prediction)
        if isinstance(gold, Collection) and isinstance(prediction, Collection):
            return self.collections(gold, prediction)
        return False

    def with_relation(self, gold: Answer, prediction: Answer) -> bool:
        if isinstance(gold, Relation) and isinstance(prediction, Relation):
            return self.relations(gold, prediction)
        relation, other = (gold, prediction) if isinstance(gold, Relation) else (prediction, gold)
        value = _assigned_value(relation)
        if value is not None:
            return self.answers(value, other) if relation is gold else self.answers(other, value)
        interval = _relation_as_interval(relation)
        if interval is not None and _interval_parts(other) is not None:
            return self.interval_sets(interval, other)
        return False

    def relations(self, gold: Relation, prediction: Relation) -> bool:
        gold_sides, gold_ops = _oriented(gold)
        prediction_sides, prediction_ops = _oriented(prediction)
        if gold_ops != prediction_ops:
            return False
        if all(self.scalars(a, b) for a, b in zip(gold_sides, prediction_sides)):
            return True
        if len(gold_ops) != 1:
            return False
        (gold_left, gold_right), (prediction_left, prediction_right) = gold_sides, prediction_sides
        if gold_ops[0] in ("=", "!="):
            if self.scalars(gold_left, prediction_right) and self.scalars(gold_right, prediction_left):
                return True
            gold_difference = gold_left - gold_right
            prediction_difference = prediction_left - prediction_right
            return (
                self.scalars(gold_difference, prediction_difference)
                or self.scalars(gold_difference, -prediction_difference)
                or self.proportional(gold_difference, prediction_difference)
            )
        # `a < b` as `b - a > 0`: equal differences mean the same inequality.
        return self.scalars(gold_right - gold_left, prediction_right - prediction_left)

    def collections(self, gold: Collection, prediction: Collection) -> bool:
        if len(gold.items) != len(prediction.items):
            return False
        kinds = {gold.kind, prediction.kind}
        if kinds == {"tuple", "set"}:
            return False
        if "tuple" in kinds:
            return all(self.answers(a, b) for a, b in zip(gold.items, prediction.items))
        return self.unordered(gold.items, prediction.items, self.answers)

    def unordered(self, gold_items: tuple, prediction_items: tuple, equal: Callable[[Any, Any], bool]) -> bool:
        """Return whether `equal` pairs the items one to one (a bipartite matching)."""
        if len(gold_items) != len(prediction_items):
            return False
        matches = [
            [j for j, prediction in enumerate(prediction_items) if equal(gold, prediction)]
            for gold in gold_items
        ]
        owner: dict[int, int] = {}

        def assign(i: int, seen: set[int]) -> bool:
            for j in matches[i]:
                if j in seen:
                    continue
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = i
                    return True
            return False

        return all(assign(i, set()) for i in range(len(gold_items)))

    def interval_sets(self, gold: Answer, prediction: Answer) -> bool:
        gold_parts = _interval_parts(gold)
        prediction_parts = _interval_parts(prediction)
        if gold_parts is None or prediction_parts is None:
            return False
        if len(gold_parts) != len(prediction_parts):
            return False
        return self.unordered(gold_parts, prediction_parts, self.intervals)

    def intervals(self, a: Interval, b: Interval) -> bool:
        return (
            a.left_closed == b.left_closed
            and a.right_closed == b.right_closed
            and self.scalars(a.left, b.left)
            and self.scalars(a.right, b.right)
        )

    def matrices(self, gold: Answer, prediction: Answer) -> bool:
        gold_rows = _matrix_rows(gold)
        prediction_rows = _matrix_rows(prediction)
        if gold_rows is None or prediction_rows is None:
            return False
        if isinstance(gold, Matrix) != isinstance(prediction, Matrix):
            # A vector written as a tuple: compare the entries in order.
            gold_entries = [entry for row in gold_rows for entry in row]
            prediction_entries = [entry for row in prediction_rows for entry in row]
            if len(gold_rows) != 1 and len(gold_rows[0]) != 1 or len(prediction_rows) != 1 and len(prediction_rows[0]) != 1:
                return False
            return len(gold_entries) == len(prediction_entries) and all(
                self.answers(a, b) for a, b in zip(gold_entries, prediction_entries)
            )
        if [len(row) for row in gold_rows] != [len(row) for row in prediction_rows]:
            return False
        return all(self.answers(a, b) for gold_row, prediction_row in zip(gold_rows, prediction_rows)
                   for a, b in zip(gold_row, prediction_row))


def _expand_plus_minus(value: Answer) -> Answer:
    if isinstance(value, sympy.Expr) and value.has(PLUS_MINUS):
        plus = value.subs(PLUS_MINUS, 1)
        minus = value.subs(PLUS_MINUS, -1)
        return Collection((plus, minus) if plus != minus else (plus,), "set")
    if isinstance(value, Collection) and any(isinstance(item, sympy.Expr) and item.has(PLUS_MINUS) for item in value.items):
        items = []
        for item in value.items:
            expanded = _expand_plus_minus(item)
            items.extend(expanded.items if isinstance(expanded, Collection) and expanded is not item else [expanded])
        return Collection(tuple(items), "set" if value.kind == "set" else "list")
    return value


def _assigned_value(relation: Relation) -> Answer | None:
    """Return v for `x = v` (a single symbol on the left), which answers "x is v"."""
    if relation.ops != ("=",):
        return None
    left, right = relation.sides
    if isinstance(left, sympy.Symbol) and left != PLUS_MINUS:
        return _expand_plus_minus(right)
    return None


def _oriented(relation: Relation) -> tuple[tuple[sympy.Expr, ...], tuple[str, ...]]:
    """Return the relation written with `<`/`<=` (a chain of `>` is read from right to left)."""
    if all(op in (">", ">=") for op in relation.ops):
        return tuple(reversed(relation.sides)), tuple(_MIRRORED[op] for op in reversed(relation.ops))
    return relation.sides, relation.ops


def _relation_as_interval(relation: Relation) -> Interval | None:
    """Return the interval of `x < 3`, `x >= 2`, `1 < x <= 3` and their mirrors, or None."""
    sides, ops = _oriented(relation)
    if any(op not in ("<", "<=") for op in ops):
        return None
    if len(ops) == 1:
        left, right = sides
        if isinstance(left, sympy.Symbol) and not right.free_symbols:
            return Interval(-sympy.oo, right, False, ops[0] == "<=")
        if isinstance(right, sympy.Symbol) and not left.free_symbols:
            return Interval(left, sympy.oo, ops[0] == "<=", False)
        return None
    if len(ops) == 2 and isinstance(sides[1], sympy.Symbol):
        low, _, high = sides
        if low.free_symbols or high.free_symbols:
            return None
        return Interval(low, high, ops[0] == "<=", ops[1] == "<=")
    return None


def _interval_parts(value: Answer) -> tuple[Interval, ...] | None:
    if isinstance(value, Interval):
        return (value,)
    if isinstance(value, IntervalUnion):
        return value.parts
    if isinstance(value, Collection) and value.kind == "tuple" and len(value.items) == 2:
        left, right = value.items
        if isinstance(left, sympy.Expr) and isinstance(right, sympy.Expr):
            return (Interval(left, right, False, False),)
    if isinstance(value, Relation):
        interval = _relation_as_interval(value)
        return None if interval is None else (interval,)
    return None


def _matrix_rows(value: Answer) -> tuple[tuple[Answer, ...], ...] | None:
    if isinstance(value, Matrix):
        return value.rows
    if isinstance(value, Collection) and value.kind == "tuple":
        return (value.items,)
    return None


def check_equal(gold: str, prediction: str, *, rel_tol: float = 1e-6) -> Verdict:
    """Check whether `prediction` equals `gold`, in this process and without a time bound.

    Use `AnswerChecker` for untrusted model output: some inputs keep sympy busy for longer than
    any deadline (`\\sqrt{10^{100000}+1}` did not finish within 20 s).

    Args:
        gold: The gold answer: a MATH-500 `answer` field, the content of a MATH `\\boxed{}`,
            a GSM8K `#### n` solution, or plain math in Python syntax (`sin(x)**2`).
        prediction: The extracted model answer (or a text with a `\\boxed{}`).
        rel_tol: Relative tolerance, used only where one side has a decimal point.

    Returns:
        The verdict: "equal", "not_equal" or "unparsable".

    Raises:
        TypeError: If `gold` or `prediction` is not a string.
        ValueError: If `rel_tol` is negative or not finite.
    """
    if not isinstance(gold, str) or not isinstance(prediction, str):
        raise TypeError(
            f"gold and prediction must be strings, got {type(gold).__name__} and {type(prediction).__name__}"
        )
    if not (0 <= rel_tol < float("inf")):
        raise ValueError(f"rel_tol must be a finite number >= 0, got {rel_tol!r}")
    try:
        gold_text = normalize_answer(gold)
        prediction_text = normalize_answer(prediction)
    except AnswerTooLongError:
        return UNPARSABLE
    if gold_text and gold_text == prediction_text:
        return EQUAL
    gold_number = parse_plain_number(gold_text)
    prediction_number = parse_plain_number(prediction_text)
    if gold_number is not None and prediction_number is not None:
        return EQUAL if plain_numbers_equal(gold_number, prediction_number, rel_tol) else NOT_EQUAL
    try:
        gold_answer = parse_normalized(gold_text)
        prediction_answer = parse_normalized(prediction_text)
    except _PARSE_ERRORS:
        return UNPARSABLE
    try:
        equal = _Comparer(rel_tol).answers(gold_answer, prediction_answer)
    except (RecursionError, ValueError, TypeError, ArithmeticError, AttributeError) as error:
        # NOTE: sympy raises these from deep inside simplification on some inputs; such a pair
        # is reported as not equal rather than failing the whole batch.
        logger.warning("comparison of %.80r and %.80r failed: %r", gold, prediction, error)
        return NOT_EQUAL
    return EQUAL if equal else NOT_EQUAL


def is_parsable_answer(text: str) -> bool:
    """Return whether `text` normalises and parses as an answer (for skipping bad gold answers).

    It runs in this process without a time bound, like `check_equal`, so it suits dataset gold
    answers but not untrusted model output.
    """
    try:
        parse_normalized(normalize_answer(text))
    except _PARSE_ERRORS:
        return False
    return True
