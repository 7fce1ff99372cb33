"""Normalise answer text before parsing, and decide plain numbers without sympy.

Normalisation is string rewriting only (regular expressions, no evaluation), so the parent
process of `AnswerChecker` can run it on untrusted model output. It removes what carries no
value: math delimiters, `\\left`/`\\right`, spacing commands, thousands separators, currency
signs, units in `\\text{...}`, degree and percent signs, and trailing periods.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from sphere_jax.grading.extract import extract_answer, gsm8k_gold

# Longer inputs are rejected as unparsable: no real final answer is this long, and the parser
# and sympy cost grow with length.
MAX_ANSWER_CHARS = 2000

_UNICODE = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",  # en dash
    "\u00d7": "\\times ",
    "\u00f7": "\\div ",
    "\u00b7": "\\cdot ",
    "\u22c5": "\\cdot ",
    "\u2264": "\\leq ",
    "\u2265": "\\geq ",
    "\u2260": "\\neq ",
    "\u00b1": "\\pm ",
    "\u2213": "\\mp ",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
    "\u221a": "\\sqrt",
    "\u222a": "\\cup ",
    "\u2208": "\\in ",
    "\u00b0": "",  # degree sign
    "\u00a0": " ",
    "\u2009": " ",
    "\u202f": " ",
    "\u20ac": "",  # euro sign
    "\u00a3": "",  # pound sign
    "\u00a5": "",  # yen sign
    "\u20b9": "",  # rupee sign
}

_ANSWER_MARKERS = re.compile(r"\\boxed|\\fbox|answer\s+is|final\s+answer", re.IGNORECASE)
_DELIMITERS = re.compile(r"^(?:\$\$(.*)\$\$|\$(.*)\$|\\\((.*)\\\)|\\\[(.*)\\\])$", re.DOTALL)
_SIZING = re.compile(r"\\(?:left|right|[bB]igg?[lr]?|middle)(?![A-Za-z])\s*\.?")
_DISPLAY = re.compile(r"\\(?:displaystyle|textstyle|scriptstyle|limits|nolimits)(?![A-Za-z])")
_FRAC_VARIANTS = re.compile(r"\\[dtc]frac(?![A-Za-z])")
_BINOM_VARIANTS = re.compile(r"\\[dt]binom(?![A-Za-z])")
_RELATION_ALIASES = (
    (re.compile(r"\\(?:le|leqslant|leq)(?![A-Za-z])"), r"\\leq "),
    (re.compile(r"\\(?:ge|geqslant|geq)(?![A-Za-z])"), r"\\geq "),
    (re.compile(r"\\(?:ne|neq)(?![A-Za-z])"), r"\\neq "),
    (re.compile(r"\\lt(?![A-Za-z])"), "<"),
    (re.compile(r"\\gt(?![A-Za-z])"), ">"),
)
_THIN_THOUSANDS = re.compile(r"(?<=\d)(?:,\\!\s*|\{,\})(?=\d{3})")
# Row separators (`\\\\`) are matched first so that `\\\\ ` does not read as `\\` + `\\ `.
_SPACING = re.compile(r"\\\\|\\[!,;: ]|\\q?quad(?![A-Za-z])|~")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\circ(?![A-Za-z])|\^\s*\{\s*\\degree\s*\}|\\degree(?![A-Za-z])")
_PERCENT = re.compile(r"\\?%")
_DOLLAR = re.compile(r"\\?\$")
_CURRENCY_WORDS = re.compile(r"^(?:USD|Rs\.?|INR)\s*(?=[-+.\d])")
_TEXT_COMMANDS = r"text|textrm|textnormal|textit|mbox|mathrm|textup|texttt|textsf"
_WHOLE_TEXT = re.compile(r"^\\(?:" + _TEXT_COMMANDS + r"|textbf|mathbf)\s*\{([^{}]*)\}$")
_TEXT_CONJUNCTION = re.compile(r"\\(?:" + _TEXT_COMMANDS + r")\s*\{\s*(?:and|or|,)\s*\}")
# A unit: text after a value, with an optional power ("15\mbox{ cm}^2").
_TEXT_UNIT = re.compile(r"\\(?:" + _TEXT_COMMANDS + r")\s*\{[^{}]*\}(?:\s*\^\s*(?:\{\s*\d\s*\}|\d))?")
_BOLD = re.compile(r"\\(?:textbf|mathbf|boldsymbol|bm|mathit|mathsf|mathbb|mathcal)\s*\{([^{}]*)\}")
_OPERATORNAME = re.compile(r"\\operatorname\*?\s*\{\s*([A-Za-z]+)\s*\}")
# A number followed by words ("12 apples", "5.4 cents"); math words are not units.
_PLAIN_UNITS = re.compile(r"^([-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:/\d+)?)\s+([A-Za-z]{2,})[A-Za-z\s.]*(?:\^\d)?$")
_MATH_WORDS = frozenset({"pi", "sqrt", "sin", "cos", "tan", "log", "ln", "exp", "inf", "infinity", "and", "or"})
_MEMBERSHIP = re.compile(r"^[A-Za-z]\s*\\in\s*")
_CONJUNCTION = re.compile(r"\s+(?:and|or)\s+")
_REPEATED_COMMAS = re.compile(r",\s*(?:,\s*)+")
_CHOICE = re.compile(r"^\(\s*([A-Za-z])\s*\)$|^([A-Z])\s*\)$")
_THOUSANDS_ONLY = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SPACES = re.compile(r"\s+")


class AnswerTooLongError(ValueError):
    """Raised for answers longer than `MAX_ANSWER_CHARS`."""


def _unwrap_delimiters(text: str) -> str:
    while True:
        match = _DELIMITERS.match(text)
        if match is None:
            return text
        inner = next(group for group in match.groups() if group is not None).strip()
        if inner == text:
            return text
        text = inner


def _strip_trailing(text: str) -> str:
    previous = None
    while previous != text:
        previous = text
        text = text.strip()
        text = re.sub(r"(?:\\\\|[.,;:])$", "", text)
        text = re.sub(r"\\(?:text|mbox)\s*\{\s*\.?\s*\}$", "", text)
    return text


def normalize_answer(text: str) -> str:
    """Rewrite an answer into the canonical text that the parser reads.

    A whole GSM8K solution (`... #### 1,000`), a text with a `\\boxed{...}` and a sentence such
    as "The answer is 42." are first reduced to their answer (see `extract_answer`), so raw gold
    fields may be passed as they are.

    Args:
        text: Gold or predicted answer text.

    Returns:
        The normalised text; equal normalised texts mean equal answers.

    Raises:
        AnswerTooLongError: If the answer (after reduction to the box or `####` part) is longer
            than `MAX_ANSWER_CHARS` characters.
    """
    if "####" in text and "\\boxed" not in text and "\\fbox" not in text:
        # GSM8K solutions: the answer is the last `####` line, without thousands separators.
        hashed = gsm8k_gold(text)
        if hashed is not None:
            text = hashed
    elif _ANSWER_MARKERS.search(text):
        extracted = extract_answer(text)
        if extracted is not None:
            text = extracted
    if len(text) > MAX_ANSWER_CHARS:
        raise AnswerTooLongError(
            f"answer of {len(text)} characters is longer than the limit of {MAX_ANSWER_CHARS}; "
            "pass the extracted final answer, not the whole output"
        )

    for char, replacement in _UNICODE.items():
        if char in text:
            text = text.replace(char, replacement)
    text = _unwrap_delimiters(text.strip())
    text = _strip_trailing(text)

    whole_text = _WHOLE_TEXT.match(text)
    if whole_text is not None:
        text = whole_text.group(1).strip()
    text = _TEXT_CONJUNCTION.sub(",", text)
    text = _OPERATORNAME.sub(r"\\\1 ", text)
    text = _BOLD.sub(r"\1", text)

    text = _SIZING.sub("", text)
    text = _DISPLAY.sub("", text)
    text = _FRAC_VARIANTS.sub(r"\\frac", text)
    text = _BINOM_VARIANTS.sub(r"\\binom", text)
    for pattern, replacement in _RELATION_ALIASES:
        text = pattern.sub(replacement, text)
    text = _THIN_THOUSANDS.sub("", text)
    text = _SPACING.sub(lambda match: match.group(0) if match.group(0) == "\\\\" else " ", text)
    text = _DEGREES.sub("", text)
    text = _PERCENT.sub("", text)
    text = _DOLLAR.sub("", text)
    text = _TEXT_UNIT.sub(" ", text)
    text = _strip_trailing(text)
    text = _CURRENCY_WORDS.sub("", text)

    plain_units = _PLAIN_UNITS.match(text)
    if plain_units is not None and plain_units.group(2).lower() not in _MATH_WORDS:
        text = plain_units.group(1)
    text = _MEMBERSHIP.sub("", text)
    text = _CONJUNCTION.sub(",", text)
    text = _REPEATED_COMMAS.sub(", ", text)
    choice = _CHOICE.match(text)
    if choice is not None:
        text = choice.group(1) or choice.group(2)
    if _THOUSANDS_ONLY.match(text):
        text = text.replace(",", "")
    text = _SPACES.sub(" ", text).strip()
    text = re.sub(r"^=\s*", "", text)
    return _strip_trailing(text)


@dataclass(frozen=True)
class PlainNumber:
    """A number written as an integer, a decimal or a fraction of integers.

    Attributes:
        value: The exact value of the literal.
        inexact: True when the literal has a decimal point, so it is compared with a tolerance.
    """

    value: Fraction
    inexact: bool


_INTEGER_OR_DECIMAL = re.compile(r"^([-+]?)(\d+(?:\.\d*)?|\.\d+)$")
_SLASH_FRACTION = re.compile(r"^([-+]?)(\d+)\s*/\s*(\d+)$")
_LATEX_FRACTION = re.compile(r"^([-+]?)\\frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*(\d+)\s*\}$")
# Digits beyond this are left to the worker, which bounds the time of the conversion.
_MAX_PLAIN_DIGITS = 400


def parse_plain_number(text: str) -> PlainNumber | None:
    """Read a normalised answer that is a plain number, or return None.

    Only integers, decimals (`18.00`, `.5`), `a/b` and `\\frac{a}{b}` with integer parts are
    plain; anything else (radicals, exponents, symbols) returns None and goes to the parser.
    """
    if len(text) > _MAX_PLAIN_DIGITS:
        return None
    match = _INTEGER_OR_DECIMAL.match(text)
    if match is not None:
        sign = -1 if match.group(1) == "-" else 1
        literal = match.group(2)
        return PlainNumber(sign * Fraction(literal), inexact="." in literal)
    for pattern in (_SLASH_FRACTION, _LATEX_FRACTION):
        match = pattern.match(text)
        if match is not None:
            denominator = int(match.group(3))
            if denominator == 0:
                return None
            sign = -1 if match.group(1) == "-" else 1
            return PlainNumber(sign * Fraction(int(match.group(2)), denominator), inexact=False)
    return None


def plain_numbers_equal(gold: PlainNumber, prediction: PlainNumber, rel_tol: float) -> bool:
    """Compare two plain numbers: exactly when both are exact, else with a relative tolerance."""
    if not (gold.inexact or prediction.inexact):
        return gold.value == prediction.value
    difference = abs(gold.value - prediction.value)
    scale = max(abs(gold.value), abs(prediction.value))
    return difference <= Fraction(rel_tol) * scale
