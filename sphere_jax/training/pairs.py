"""Preference pairs: reading a JSONL file, tokenizing with the policy tokenizer, and cutting padded batches.

A pairs file has one JSON object per line with three strings: `prompt` (plain text or a prompt already rendered
with the chat template, generation prompt included), and the completions `chosen` and `rejected`. Tokens are
encoded with `add_special_tokens=False`, so a rendered chat prompt is not given a second BOS, and the EOS token
is appended to each completion so that the policy learns where to stop.

Each batch keeps a pair's chosen and rejected sequence next to each other on a `[pairs, 2, length]` layout
(index 0 chosen, 1 rejected). The trainer reshapes it to `[2 * pairs, length]` for one forward, and the pair
dimension stays the one that is sharded, so a device always stores both halves of its pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PAIR_FIELDS = ("prompt", "chosen", "rejected")


class PairsFileError(ValueError):
    """A pairs file that is missing, empty, or has a line that is not a valid preference pair."""


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One preference pair as text."""

    prompt: str
    chosen: str
    rejected: str


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair after truncation.

    Attributes:
        prompt: Prompt token ids, shared by both completions.
        chosen: Chosen completion ids, EOS included unless truncation cut it.
        rejected: Rejected completion ids, EOS included unless truncation cut it.
        truncated: Whether any of the three was cut to fit `max_length`.
    """

    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    truncated: bool

    @property
    def length(self) -> int:
        """Tokens of the longer of the two full sequences."""
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))


@dataclasses.dataclass(frozen=True)
class PairBatch:
    """Padded arrays of one batch, on the host.

    Attributes:
        tokens: Prompt then completion ids, right-padded with `pad_id`.  # [pairs, 2, length] int32
        valid: True on real tokens, False on padding.  # [pairs, 2, length] bool
        loss_mask: True on completion tokens, the ones whose log-probs are summed.  # [pairs, 2, length] bool
        pair_weights: 1 for a real pair, 0 for a row that only fills the batch.  # [pairs] float32
        pair_indices: Index of each row's pair in the dataset; a filler row repeats a real index.  # [pairs] int64
        hidden_positions: Positions whose hidden state predicts each completion token, starting at the last prompt
            token. Past the completion end they repeat an in-range position (see `completion_hidden_positions`).
            # [pairs, 2, window] int32
    """

    tokens: np.ndarray
    valid: np.ndarray
    loss_mask: np.ndarray
    pair_weights: np.ndarray
    pair_indices: np.ndarray
    hidden_positions: np.ndarray

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens of the real pairs."""
        return int(np.sum(self.valid * self.pair_weights[:, None, None]))


def read_pairs(path: str | os.PathLike[str]) -> list[PreferencePair]:
    """Read a JSONL pairs file; blank lines are skipped.

    Raises:
        PairsFileError: If the file is missing or has no pairs, or a line is not a JSON object with non-empty
            string fields `prompt`, `chosen` and `rejected`. The message names the file and the 1-based line.
    """
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"Pairs file {path} not found; expected a JSONL file of prompt/chosen/rejected objects.")
    pairs: list[PreferencePair] = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            pairs.append(_parse_pair(line, path, line_number))
    if not pairs:
        raise PairsFileError(
            f"Pairs file {path} contains no pairs; each line must be a JSON object with string fields "
            f"{', '.join(PAIR_FIELDS)}."
        )
    logger.info("Read %d preference pairs from %s", len(pairs), path)
    return pairs


def _parse_pair(line: str, path: Path, line_number: int) -> PreferencePair:
    where = f"{path}, line {line_number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise PairsFileError(f"{where}: invalid JSON ({error.msg} at column {error.colno}).") from None
    if not isinstance(record, dict):
        raise PairsFileError(f"{where}: expected a JSON object with fields {PAIR_FIELDS}, got {type(record).__name__}.")
    missing = [name for name in PAIR_FIELDS if name not in record]
    if missing:
        raise PairsFileError(f"{where}: missing field(s) {missing}; every pair needs {', '.join(PAIR_FIELDS)}.")
    for name in PAIR_FIELDS:
        value = record[name]
        if not isinstance(value, str):
            raise PairsFileError(f"{where}: field {name!r} must be a string, got {type(value).__name__}.")
        if not value:
            raise PairsFileError(f"{where}: field {name!r} is empty; give a non-empty {name} text.")
    return PreferencePair(prompt=record["prompt"], chosen=record["chosen"], rejected=record["rejected"])


def write_pairs(path: str | os.PathLike[str], pairs: Sequence[PreferencePair]) -> None:
    """Write pairs as JSONL, one object per line."""
    with Path(path).open("w", encoding="utf-8") as out:
        for pair in pairs:
            out.write(json.dumps(dataclasses.asdict(pair), ensure_ascii=False) + "\n")


def truncate_pair(
    prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int], max_length: int
) -> TokenizedPair:
    """Cut a pair so that prompt + completion fits `max_length` for both completions.

    The prompt is kept whole and the completions lose their ends. When the prompt alone leaves no room for a
    completion token, the prompt keeps its last `max_length - 1` tokens (the question usually sits at its end)
    and each completion keeps its first token.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one prompt and one completion token), got {max_length}.")
    prompt, chosen, rejected = tuple(prompt), tuple(chosen), tuple(rejected)
    truncated = False
    if len(prompt) > max_length - 1:
        prompt = prompt[len(prompt) - (max_length - 1) :]
        truncated = True
    budget = max_length - len(prompt)
    if len(chosen) > budget or len(rejected) > budget:
        chosen, rejected = chosen[:budget], rejected[:budget]
        truncated = True
    return TokenizedPair(prompt=prompt, chosen=chosen, rejected=rejected, truncated=truncated)


def tokenize_pairs(
    pairs: Sequence[PreferencePair], tokenizer: Any, max_length: int, eos_token_id: int | None = None
) -> list[TokenizedPair]:
    """Tokenize pairs with `add_special_tokens=False`, append EOS to completions and truncate to `max_length`.

    Args:
        pairs: Text pairs.
        tokenizer: A Hugging Face tokenizer (anything with `encode(text, add_special_tokens=...)`).
        max_length: Maximum tokens of prompt plus completion.
        eos_token_id: Token appended to each completion; defaults to `tokenizer.eos_token_id`.

    Raises:
        ValueError: If no EOS id is given and the tokenizer has none, or a prompt encodes to no tokens.
    """
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no eos_token_id; pass eos_token_id to tokenize_pairs.")
    tokenized = []
    for index, pair in enumerate(pairs):
        prompt = tokenizer.encode(pair.prompt, add_special_tokens=False)
        if not prompt:
            raise ValueError(f"Pair {index}: the prompt {pair.prompt!r} encodes to no tokens; give a non-empty prompt.")
        chosen = [*tokenizer.encode(pair.chosen, add_special_tokens=False), eos]
        rejected = [*tokenizer.encode(pair.rejected, add_special_tokens=False), eos]
        tokenized.append(truncate_pair(prompt, chosen, rejected, max_length))
    truncated = sum(pair.truncated for pair in tokenized)
    if truncated:
        logger.warning(
            "Truncated %d of %d pairs to max_length=%d (completion ends cut, or prompt start cut when the prompt "
            "alone was too long)", truncated, len(tokenized), max_length,
        )
    return tokenized


def bucket_length(length: int, bucket: int, max_length: int) -> int:
    """Round `length` up to a multiple of `bucket`, capped at `max_length` rounded up to `bucket`."""
    cap = math.ceil(max_length / bucket) * bucket
    return min(cap, max(bucket, math.ceil(length / bucket) * bucket))


def make_batch(
    pairs: Sequence[TokenizedPair],
    indices: Sequence[int],
    pad_id: int,
    length: int,
    batch_pairs: int | None = None,
    window_bucket: int = 64,
) -> PairBatch:
    """Pad the pairs at `indices` into one `[pairs, 2, length]` batch.

    Args:
        pairs: All tokenized pairs.
        indices: Dataset indices of the pairs of this batch, at least one.
        pad_id: Token id written on padding; padding is also masked out by `valid`.
        length: Padded sequence length, at least the longest sequence of the batch.
        batch_pairs: Rows of the batch; rows past `len(indices)` repeat the first pair with weight 0.
            Defaults to `len(indices)`.
        window_bucket: The completion window (`hidden_positions.shape[-1]`) is rounded up to a multiple of this.
    """
    if len(indices) == 0:
        raise ValueError("make_batch needs at least one pair index.")
    batch_pairs = len(indices) if batch_pairs is None else batch_pairs
    if batch_pairs < len(indices):
        raise ValueError(f"batch_pairs={batch_pairs} is smaller than the {len(indices)} pairs given.")
    row_indices = np.full(batch_pairs, indices[0], np.int64)
    row_indices[: len(indices)] = indices
    weights = np.zeros(batch_pairs, np.float32)
    weights[: len(indices)] = 1.0

    tokens = np.full((batch_pairs, 2, length), pad_id, np.int32)
    valid = np.zeros((batch_pairs, 2, length), bool)
    loss_mask = np.zeros((batch_pairs, 2, length), bool)
    for row, index in enumerate(row_indices):
        pair = pairs[index]
        if pair.length > length:
            raise ValueError(f"Pair {index} has {pair.length} tokens, more than the padded length {length}.")
        for side, completion in enumerate((pair.chosen, pair.rejected)):
            sequence = pair.prompt + completion
            tokens[row, side, : len(sequence)] = sequence
            valid[row, side, : len(sequence)] = True
            loss_mask[row, side, len(pair.prompt) : len(sequence)] = True
    return PairBatch(
        tokens=tokens,
        valid=valid,
        loss_mask=loss_mask,
        pair_weights=weights,
        pair_indices=row_indices,
        hidden_positions=completion_hidden_positions(loss_mask, window_bucket),
    )


def completion_hidden_positions(loss_mask: np.ndarray, window_bucket: int) -> np.ndarray:
    """Return, per sequence, the positions whose hidden states predict its completion tokens.

    Completion token t is predicted from position t - 1, so a sequence whose completion starts at s gets
    `s - 1, s, ..., s + window - 2`. The window is the longest completion of the batch rounded up to
    `window_bucket`, at most `length - 1`. Entries past a completion's end are clipped to `length - 2` to stay in
    range. The caller must mask them out by the completion length, because `loss_mask` at a clipped entry may be True.

    Args:
        loss_mask: True on completion tokens; every row has a non-empty prompt, so starts are >= 1.  # [..., length]

    Returns:
        int32 positions.  # [..., window]
    """
    length = loss_mask.shape[-1]
    starts = np.argmax(loss_mask, axis=-1)  # [...]
    longest = int(np.max(np.sum(loss_mask, axis=-1)))
    window = min(length - 1, max(1, math.ceil(longest / window_bucket)) * window_bucket)
    positions = starts[..., None] - 1 + np.arange(window)
    return np.minimum(positions, length - 2).astype(np.int32)


def epoch_permutation(num_pairs: int, seed: int, epoch: int) -> np.ndarray:
    """Return the pair order of `epoch`, which depends only on (seed, epoch), so a resumed run keeps the order."""
    return np.random.default_rng([seed, epoch]).permutation(num_pairs)


def pairs_fingerprint(pairs: Sequence[TokenizedPair]) -> str:
    """Return a SHA-256 hex digest of every pair's token ids, to tie stored reference log-probs to the tokens."""
    digest = hashlib.sha256()
    for pair in pairs:
        for ids in (pair.prompt, pair.chosen, pair.rejected):
            digest.update(np.asarray(ids, np.int64).tobytes())
            digest.update(b"|")
    return digest.hexdigest()


def reference_logps_paths(pairs_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return the `.ref_logps.npy` array path and its `.ref_logps.json` metadata path beside a pairs file."""
    pairs_path = Path(pairs_path)
    stem = pairs_path.with_suffix("") if pairs_path.suffix == ".jsonl" else pairs_path
    return stem.with_name(stem.name + ".ref_logps.npy"), stem.with_name(stem.name + ".ref_logps.json")


def save_reference_logps(pairs_path: str | os.PathLike[str], logps: np.ndarray, metadata: dict[str, Any]) -> Path:
    """Store reference log-probs `[pairs, 2]` (chosen, rejected) beside the pairs file; return the array path."""
    array_path, metadata_path = reference_logps_paths(pairs_path)
    np.save(array_path, np.asarray(logps, np.float32))
    metadata_path.write_text(json.dumps(metadata, indent=2, sort_keys=True))
    logger.info("Saved reference log-probs of %d pairs to %s", len(logps), array_path)
    return array_path


def load_reference_logps(pairs_path: str | os.PathLike[str], expected_metadata: dict[str, Any]) -> np.ndarray | None:
    """Load stored reference log-probs if their metadata equals `expected_metadata`, else return None."""
    array_path, metadata_path = reference_logps_paths(pairs_path)
    if not (array_path.is_file() and metadata_path.is_file()):
        return None
    try:
        stored = json.loads(metadata_path.read_text())
    except json.JSONDecodeError:
        logger.warning("Ignoring %s: its metadata file %s is not valid JSON", array_path, metadata_path)
        return None
    if stored != expected_metadata:
        logger.info("Stored reference log-probs %s are for other tokens, model or settings; recomputing", array_path)
        return None
    logps = np.load(array_path)
    if logps.shape != (expected_metadata["num_pairs"], 2):
        expected_shape = (expected_metadata["num_pairs"], 2)
        logger.warning("Ignoring %s: shape %s, expected %s; recomputing", array_path, logps.shape, expected_shape)
        return None
    return logps
