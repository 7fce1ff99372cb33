"""Tokenize normalised LaTeX or plain-math answer text.

The lexer accepts a fixed alphabet: digits, ASCII letters, the operators of arithmetic,
comparison and grouping, and backslash commands. Any other character (quotes, `@`, `#`, `?`,
backticks, ...) raises `LexError`, so text that reads as program code never reaches the parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class LexError(ValueError):
    """Raised for a character that no answer syntax uses."""


@dataclass(frozen=True)
class Token:
    """One token.

    Attributes:
        kind: "num" (a digit literal), "name" (one letter or a known multi-letter name such as
            `sin` or `pi`), "cmd" (a backslash command, with the backslash), "begin" and "end"
            (an environment, with its name as text), "op" (an operator or bracket) or "eof".
        text: The token text; `**` is read as `^`, `==` as `=`, and `\\\\` (a row break) as
            "rowsep".
    """

    kind: str
    text: str


# Plain-text names that are read as one token; any other letter run is split into letters,
# so `xy` is x times y. Longer names come first so `arcsin` wins over `sin`.
PLAIN_NAMES = tuple(
    sorted(
        (
            "arcsin", "arccos", "arctan", "asin", "acos", "atan", "sinh", "cosh", "tanh",
            "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "abs",
            "floor", "ceil", "pi", "infinity", "infty", "inf", "oo",
        ),
        key=len,
        reverse=True,
    )
)

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    |(?P<begin>\\begin\s*\{\s*(?P<begin_name>[A-Za-z*]+)\s*\})
    |(?P<end>\\end\s*\{\s*(?P<end_name>[A-Za-z*]+)\s*\})
    |(?P<rowsep>\\\\)
    |(?P<cmd>\\[A-Za-z]+|\\[{}|])
    |(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+(?![A-Za-z]))?)
    |(?P<letters>[A-Za-z]+)
    |(?P<op>\*\*|<=|>=|!=|==|=<|=>|[-+*/^_=<>()\[\]{},;|!&:])
    """,
    re.VERBOSE,
)

_OPERATOR_ALIASES = {"**": "^", "==": "=", "=<": "<=", "=>": ">="}


def _split_letters(run: str) -> list[Token]:
    tokens = []
    index = 0
    while index < len(run):
        for name in PLAIN_NAMES:
            if run.startswith(name, index):
                tokens.append(Token("name", name))
                index += len(name)
                break
        else:
            tokens.append(Token("name", run[index]))
            index += 1
    return tokens


def tokenize(text: str) -> list[Token]:
    """Split normalised answer text into tokens, ending with an "eof" token.

    Raises:
        LexError: If the text has a character outside the answer alphabet.
    """
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise LexError(f"unexpected character {text[position]!r} at position {position} in {text[:80]!r}")
        position = match.end()
        kind = match.lastgroup
        if kind == "space":
            continue
        if kind in ("begin_name", "begin"):
            tokens.append(Token("begin", match.group("begin_name")))
        elif kind in ("end_name", "end"):
            tokens.append(Token("end", match.group("end_name")))
        elif kind == "rowsep":
            tokens.append(Token("op", "rowsep"))
        elif kind == "letters":
            tokens.extend(_split_letters(match.group(0)))
        elif kind == "op":
            op = match.group(0)
            tokens.append(Token("op", _OPERATOR_ALIASES.get(op, op)))
        else:
            tokens.append(Token(kind, match.group(0)))
    tokens.append(Token("eof", ""))
    return tokens
