"""Split a batch's prompts into prefill tiers of similar length, so short prompts pad little.

A batch decodes with every prompt left-padded to the longest prompt's bucket. Its prefill, which
costs rows x slots x parameters, need not pad that far: prompts sorted by length can be
prefilled in consecutive tiers, each padded to its own longest prompt, and their caches placed
side by side. Each tier also pads its rows up to a batch bucket and costs one more call, so more
tiers are not always better. `plan_prefill_tiers` finds the split with the least padded work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Tier:
    """Prompts [start, stop) of the length-sorted list, prefilled as `rows` x `slots` tokens."""

    start: int
    stop: int
    slots: int  # prompt bucket of the tier's longest prompt
    rows: int  # batch bucket of the tier's prompt count


def _bucket(value: int, buckets: Sequence[int]) -> int | None:
    return next((b for b in buckets if value <= b), None)


def plan_prefill_tiers(
    lengths: Sequence[int],
    prompt_buckets: Sequence[int],
    batch_buckets: Sequence[int],
    *,
    call_cost: int,
) -> list[Tier]:
    """Return the consecutive tiers of `lengths` (sorted ascending) that minimise padded work.

    The work of a tier is rows x slots token positions plus `call_cost` positions for the call
    itself (its dispatch and one read of the weights). A dynamic program over split points:
    O(n^2) for n prompts, at most the largest batch bucket.
    """
    if list(lengths) != sorted(lengths):
        raise ValueError("plan_prefill_tiers needs lengths sorted ascending")
    n = len(lengths)
    best = [0] + [None] * n  # best[j]: least work for the first j prompts
    split = [0] * (n + 1)
    for stop in range(1, n + 1):
        slots = _bucket(lengths[stop - 1], prompt_buckets)
        if slots is None:
            raise ValueError(
                f"prompt length {lengths[stop - 1]} exceeds the largest prompt bucket {prompt_buckets[-1]}; add a larger bucket"
            )
        for start in range(stop - 1, -1, -1):
            rows = _bucket(stop - start, batch_buckets)
            if rows is None:
                break
            work = best[start] + rows * slots + call_cost
            if best[stop] is None or work < best[stop]:
                best[stop], split[stop] = work, start
    tiers = []
    stop = n
    while stop > 0:
        start = split[stop]
        tiers.append(
            Tier(start, stop, _bucket(lengths[stop - 1], prompt_buckets), _bucket(stop - start, batch_buckets))
        )
        stop = start
    return tiers[::-1]
