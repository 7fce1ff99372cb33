"""Stop strings matched token by token inside the compiled decode loop.

BPE merges a delimiter such as "\\n\\n" with its neighbours (".\\n\\n", "\\n\\n\\n"), or splits it
over two "\\n" tokens, so no single token id marks it. Each stop string becomes a
Knuth-Morris-Pratt automaton over characters, and the table `next_state[state, token]` applies a
whole token's text at once: the loop keeps one small state per row and stop string, and a row
stops when a state reaches the string's length.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Invert the byte-level BPE alphabet: printable bytes map to themselves, the rest to U+0100 on."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


def token_texts(tokenizer, vocab_size: int) -> list[str]:
    """Return the text of every token id alone; ids the tokenizer lacks get ''."""
    decoder = _byte_decoder()
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    texts = []
    special = set(getattr(tokenizer, "all_special_tokens", []))
    for token_id, piece in enumerate(pieces):
        if piece is None:
            texts.append("")
        elif piece in special:
            texts.append(piece)
        elif all(ch in decoder for ch in piece):
            texts.append(bytes(decoder[ch] for ch in piece).decode("utf-8", errors="replace"))
        elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            texts.append(bytes([int(piece[3:5], 16)]).decode("utf-8", errors="replace"))
        else:  # SentencePiece pieces mark spaces with U+2581
            texts.append(piece.replace("\u2581", " "))
    texts.extend([""] * (vocab_size - len(texts)))
    return texts


def _failure_function(pattern: str) -> list[int]:
    failure = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = failure[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        failure[i] = k
    return failure


def _advance(pattern: str, failure: list[int], state: int, text: str) -> int:
    """Run the automaton from `state` over `text`; return len(pattern) as soon as it matches."""
    for ch in text:
        while state and pattern[state] != ch:
            state = failure[state - 1]
        if pattern[state] == ch:
            state += 1
        if state == len(pattern):
            return state
    return state


def stop_tables(texts: list[str], stop_strings: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Build next-state tables [num_stops, max_len, vocab] int16 and stop lengths [num_stops].

    A value equal to the stop string's length means "this token completes the stop string".
    """
    if not stop_strings:
        return np.zeros((0, 1, len(texts)), np.int16), np.zeros((0,), np.int16)
    if any(not s for s in stop_strings):
        raise ValueError(f"stop strings must be non-empty, got {stop_strings!r}")
    width = max(len(s) for s in stop_strings)
    tables = np.zeros((len(stop_strings), width, len(texts)), np.int16)
    for s_index, pattern in enumerate(stop_strings):
        failure = _failure_function(pattern)
        alphabet = set(pattern)
        for token_id, text in enumerate(texts):
            if not alphabet.intersection(text):
                continue  # no character of the pattern: every state falls back to 0
            for state in range(len(pattern)):
                tables[s_index, state, token_id] = _advance(pattern, failure, state, text)
    return tables, np.array([len(s) for s in stop_strings], np.int16)


def cut_at_stop(text: str, stop_strings: tuple[str, ...], keep_stop_string: bool = False) -> str:
    """Cut `text` at the earliest stop string, before it or (keep_stop_string) after it."""
    matches = [(text.find(s), s) for s in stop_strings if s in text]
    if not matches:
        return text
    start, stop = min(matches)
    return text[: start + len(stop)] if keep_stop_string else text[:start]
