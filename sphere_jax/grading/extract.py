"""Extract final answers from model output and gold answers from GSM8K, MATH and MATH-500.

Everything here is plain string work: no parsing, no evaluation. The strings returned are
raw answer text that `sphere_jax.grading.normalize` and `sphere_jax.grading.parser` turn into
comparable values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_BOX_COMMANDS = ("\\boxed", "\\fbox")

# `#### 72` at the start of a line, as GSM8K solutions and GSM8K-style model output end.
_HASH_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)

# "The answer is 42." and "final answer: 42"; the answer runs to the end of the line or to a
# sentence-ending period (a period followed by whitespace or the end, so "3.5" stays whole).
_SENTENCE_END = r"(?=\.\s|\.?\s*$|\n)"
_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*[:=]?\s*(.+?)" + _SENTENCE_END, re.IGNORECASE | re.MULTILINE)
_FINAL_ANSWER = re.compile(r"final\s+answer\s*(?:is)?\s*[:=]\s*(.+?)" + _SENTENCE_END, re.IGNORECASE | re.MULTILINE)

# A thousands separator: a comma between a digit and exactly three digits.
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _unescaped_braces(text: str, start: int = 0) -> Iterator[tuple[int, int]]:
    """Yield (index, +1 for `{` or -1 for `}`) for each brace from `start` on.

    Escaped braces (`\\{`, `\\}`) are literal characters and are skipped.
    """
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            yield index, 1
        elif char == "}":
            yield index, -1
        index += 1


def _match_braces(text: str, open_index: int) -> int | None:
    """Return the index of the brace that closes the one at `open_index`, or None if unbalanced.

    Escaped braces do not count, so `\\boxed{\\{1, 2\\}}` closes at the last brace.
    """
    depth = 0
    for index, change in _unescaped_braces(text, open_index):
        depth += change
        if depth == 0:
            return index
    return None


def braces_balanced(text: str) -> bool:
    """Return whether every unescaped ``{`` has its ``}``; ``\\{`` and ``\\}`` are literal braces."""
    depth = 0
    for _, change in _unescaped_braces(text):
        depth += change
        if depth < 0:
            return False
    return depth == 0


def _last_box_start(text: str) -> tuple[int, str] | None:
    """Return the position and command of the last `\\boxed` or `\\fbox` in `text`."""
    best: tuple[int, str] | None = None
    for command in _BOX_COMMANDS:
        position = text.rfind(command)
        while position != -1:
            after = position + len(command)
            # `\boxedx` is another command name, not a box.
            if after < len(text) and text[after].isalpha():
                position = text.rfind(command, 0, position)
                continue
            if best is None or position > best[0]:
                best = (position, command)
            break
    return best


def last_boxed(text: str) -> str | None:
    """Return the content of the last `\\boxed{...}` or `\\fbox{...}` in `text`.

    Nested braces are matched, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`. The brace-less
    form `\\boxed 5` gives the text up to the next whitespace or `$`.

    Args:
        text: Model output or a MATH solution.

    Returns:
        The box content with surrounding whitespace removed, or None when there is no box or
        its braces never close.
    """
    found = _last_box_start(text)
    if found is None:
        return None
    position, command = found
    index = position + len(command)
    while index < len(text) and text[index] in " \t":
        index += 1
    if index >= len(text):
        return None
    if text[index] == "{":
        close = _match_braces(text, index)
        if close is None:
            return None
        return text[index + 1 : close].strip()
    match = re.match(r"[^\s$]+", text[index:])
    if match is None:
        return None
    return match.group(0).strip()


def gsm8k_gold(solution: str) -> str | None:
    """Return the answer after `####` in a GSM8K solution, with thousands separators removed.

    Args:
        solution: The `answer` field of a GSM8K record, e.g. "... so 3 + 4 = 7.\\n#### 7".

    Returns:
        The answer text, e.g. "1000" for "#### 1,000", or None when there is no `####` line.
    """
    matches = _HASH_ANSWER.findall(solution)
    if not matches:
        return None
    answer = _THOUSANDS_COMMA.sub("", matches[-1].strip())
    return answer or None


def math_gold(solution: str) -> str | None:
    """Return the gold answer of a MATH record: the last box in its `solution` field.

    MATH-500 records carry an `answer` field that already holds this text; use it directly.
    """
    return last_boxed(solution)


def _strip_answer_text(answer: str) -> str:
    answer = answer.strip()
    # Dollar signs that wrap the whole answer are math delimiters ("$\frac{1}{2}$").
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$") and not answer.startswith("$$"):
        inner = answer[1:-1]
        if "$" not in inner:
            answer = inner
    elif answer.startswith("$$") and answer.endswith("$$") and len(answer) > 4:
        answer = answer[2:-2]
    return answer.strip().rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """Return the final answer in model output.

    The sources are tried in order: the last `\\boxed{...}` or `\\fbox{...}`, the last
    `#### n` line, the last "the answer is ...", and the last "final answer: ...".

    Args:
        text: A model completion.

    Returns:
        The answer text with wrapping `$` and a trailing period removed, or None when no source
        matches.
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashed = _HASH_ANSWER.findall(text)
    if hashed:
        answer = _strip_answer_text(hashed[-1])
        if answer:
            return answer
    for pattern in (_ANSWER_IS, _FINAL_ANSWER):
        matches = pattern.findall(text)
        if matches:
            answer = _strip_answer_text(matches[-1])
            if answer:
                return answer
    return None


_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """Return the last number in `text` without thousands separators, or None.

    A lenient fallback for models that do not mark their answer, as small models often end with
    "3 + 4 = 7.". It can pick a number that is not the answer, so callers turn it on explicitly.
    """
    matches = _LAST_NUMBER.findall(text)
    return matches[-1].replace(",", "") if matches else None


def extract_answer_or_fallback(text: str, fallback: str = "none", *, finished: bool = True) -> str | None:
    """Return `extract_answer(text)`, or with fallback "last_number" the last number when that finds none.

    The fallback applies only to a `finished` output, one that the model ended itself. In an
    output cut at a token or depth limit, the last number is an intermediate value.
    """
    answer = extract_answer(text)
    if answer is None and fallback == "last_number" and finished:
        return last_number(text)
    return answer
