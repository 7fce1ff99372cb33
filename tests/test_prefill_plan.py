"""Prefill tiers: the dynamic program against brute force over every split."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sphere_jax.sampling.prefill_plan import plan_prefill_tiers

PROMPT_BUCKETS = (16, 32, 48, 64, 96, 128)
BATCH_BUCKETS = (1, 2, 4, 8)


def bucket(value, buckets):
    return next(b for b in buckets if value <= b)


def work_of(lengths, cuts, call_cost):
    """Padded work of splitting sorted `lengths` at `cuts`, or None if a tier is too large."""
    bounds = [0, *cuts, len(lengths)]
    total = 0
    for start, stop in itertools.pairwise(bounds):
        if stop - start > BATCH_BUCKETS[-1]:
            return None
        total += bucket(stop - start, BATCH_BUCKETS) * bucket(lengths[stop - 1], PROMPT_BUCKETS) + call_cost
    return total


@pytest.mark.parametrize("seed", range(40))
def test_plan_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    lengths = sorted(int(x) for x in rng.integers(1, 129, size=int(rng.integers(1, 12))))
    call_cost = int(rng.choice([0, 16, 64]))
    tiers = plan_prefill_tiers(lengths, PROMPT_BUCKETS, BATCH_BUCKETS, call_cost=call_cost)

    assert tiers[0].start == 0
    assert tiers[-1].stop == len(lengths)
    assert all(a.stop == b.start for a, b in itertools.pairwise(tiers))
    for tier in tiers:
        assert tier.slots == bucket(lengths[tier.stop - 1], PROMPT_BUCKETS)
        assert tier.rows == bucket(tier.stop - tier.start, BATCH_BUCKETS)
    planned = sum(t.rows * t.slots + call_cost for t in tiers)
    brute = min(
        w
        for r in range(len(lengths))
        for cuts in itertools.combinations(range(1, len(lengths)), r)
        if (w := work_of(lengths, cuts, call_cost)) is not None
    )
    assert planned == brute


def test_short_prompts_get_own_tier():
    # 7 short prompts and one long one: one tier would pad all 8 rows to 128 slots (1024).
    tiers = plan_prefill_tiers([10, 11, 12, 12, 13, 14, 15, 120], PROMPT_BUCKETS, BATCH_BUCKETS, call_cost=16)
    assert [(t.start, t.stop, t.rows, t.slots) for t in tiers] == [(0, 7, 8, 16), (7, 8, 1, 128)]


def test_call_cost_merges_similar_prompts():
    tiers = plan_prefill_tiers([30, 40, 50, 60], PROMPT_BUCKETS, BATCH_BUCKETS, call_cost=1000)
    assert [(t.start, t.stop) for t in tiers] == [(0, 4)]


def test_plan_rejects_bad_lengths():
    with pytest.raises(ValueError, match="sorted ascending"):
        plan_prefill_tiers([5, 3], PROMPT_BUCKETS, BATCH_BUCKETS, call_cost=0)
    with pytest.raises(ValueError, match="prompt length 200 exceeds the largest prompt bucket 128"):
        plan_prefill_tiers([5, 200], PROMPT_BUCKETS, BATCH_BUCKETS, call_cost=0)
