"""Group token sequences that start alike, so a shared start is prefilled once.

The self-judge reward scores E candidate steps of one search node with E verification prompts
that are equal up to the candidate. Prefilling the common start once and only the rest per
prompt removes most of the work. This module decides the groups; the sampler runs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class PrefixGroup:
    """Sequences `members` (indices into the input) whose first `shared` tokens are equal.

    `shared` is 0 for a group of one: that sequence is prefilled whole. Otherwise every member
    has at least one token after the shared part, so each member has its own last position.
    """

    members: tuple[int, ...]
    shared: int


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens that `a` and `b` have in common."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def group_by_shared_prefix(
    sequences: Sequence[Sequence[int]],
    *,
    min_shared: int,
    max_members: int,
    max_rest: int,
) -> list[PrefixGroup]:
    """Split `sequences` into groups that maximise the number of prefill tokens saved.

    A group of n sequences sharing s leading tokens saves (n - 1) * s tokens. In lexicographic
    order, sequences that share long starts are neighbours, so groups are runs of neighbours.
    A dynamic program finds the best split into such runs. Where the limits bind, a group of
    non-neighbours can save a few more tokens in rare cases; such groups are not searched.

    Args:
        sequences: token ids per sequence, each non-empty.
        min_shared: a group of two or more shares at least this many tokens.
        max_members: at most this many sequences per group (the rows of one batch).
        max_rest: at most this many tokens per member after the shared part (the largest
            bucket the rest is padded to).

    Returns:
        Groups covering every index exactly once, groups of one included.
    """
    if min_shared < 1 or max_members < 1 or max_rest < 1:
        raise ValueError(
            f"min_shared={min_shared}, max_members={max_members} and max_rest={max_rest} must all be at least 1"
        )
    order = sorted(range(len(sequences)), key=lambda i: tuple(sequences[i]))
    count = len(order)
    neighbour_common = [
        common_prefix_length(sequences[order[k]], sequences[order[k + 1]]) for k in range(count - 1)
    ]
    # saved[j] is the most tokens saved over the first j sorted sequences, and start[j] is where the
    # last group of that best split starts.
    saved = [0] * (count + 1)
    start = [0] * (count + 1)
    shared_of = [0] * (count + 1)
    for end in range(1, count + 1):
        saved[end], start[end], shared_of[end] = saved[end - 1], end - 1, 0  # a group of one
        common = min_length = longest = len(sequences[order[end - 1]])
        for first in range(end - 2, max(-1, end - 1 - max_members), -1):
            common = min(common, neighbour_common[first])
            length = len(sequences[order[first]])
            min_length, longest = min(min_length, length), max(longest, length)
            shared = min(common, min_length - 1)
            if shared < min_shared or longest - shared > max_rest:
                break  # shared only shrinks and the rest only grows as the group reaches further back
            gain = saved[first] + (end - first - 1) * shared
            if gain > saved[end]:
                saved[end], start[end], shared_of[end] = gain, first, shared
    groups = []
    end = count
    while end > 0:
        first = start[end]
        groups.append(PrefixGroup(tuple(order[first:end]), shared_of[end]))
        end = first
    return groups[::-1]
