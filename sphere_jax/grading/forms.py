"""Parsed answer values that are not a single sympy expression.

A parsed answer is a sympy expression (a number, an expression in symbols), or one of these
structured forms, whose items are again parsed answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import sympy


@dataclass(frozen=True)
class Text:
    """A word answer ("Evelyn", "even"), compared case-insensitively without spaces."""

    text: str


@dataclass(frozen=True)
class Collection:
    """Several answers.

    Attributes:
        items: The answers, in written order.
        kind: "tuple" for a bracketed ordered tuple (`(1, 2)`, `[1, 2, 3]`), "set" for a braced
            set (`\\{1, 2\\}`, `\\emptyset`) and "list" for a bare comma list (`1, 2`), which
            MATH uses for "all solutions" and so compares unordered.
    """

    items: tuple["Answer", ...]
    kind: str


@dataclass(frozen=True)
class Interval:
    """An interval of the real line; an infinite end is `sympy.oo` or `-sympy.oo`."""

    left: sympy.Expr
    right: sympy.Expr
    left_closed: bool
    right_closed: bool


@dataclass(frozen=True)
class IntervalUnion:
    """A union of intervals (`(-\\infty, 2) \\cup (3, \\infty)`), compared unordered."""

    parts: tuple[Interval, ...]


@dataclass(frozen=True)
class Matrix:
    """A matrix or vector from a `pmatrix`, `bmatrix` or `matrix` environment."""

    rows: tuple[tuple[sympy.Expr, ...], ...]


@dataclass(frozen=True)
class Relation:
    """An equation, inequality or chain of them, `sides[0] ops[0] sides[1] ops[1] ...`.

    Attributes:
        sides: The expressions, one more than `ops`.
        ops: Each one of "=", "!=", "<", "<=", ">", ">=".
    """

    sides: tuple[sympy.Expr, ...]
    ops: tuple[str, ...]


Answer = Union[sympy.Expr, Text, Collection, Interval, IntervalUnion, Matrix, Relation]
