"""Grouping prompts by shared start: coverage, limits, and the most tokens saved."""

from __future__ import annotations

import itertools
import random

import pytest

from sphere_jax.sampling.prefix_groups import PrefixGroup, common_prefix_length, group_by_shared_prefix


def saved(groups: list[PrefixGroup]) -> int:
    return sum((len(g.members) - 1) * g.shared for g in groups)


def check_valid(groups, sequences, *, min_shared, max_members, max_rest):
    members = sorted(i for g in groups for i in g.members)
    assert members == list(range(len(sequences)))
    for group in groups:
        assert len(group.members) <= max_members
        if len(group.members) == 1:
            assert group.shared == 0
            continue
        assert group.shared >= min_shared
        head = sequences[group.members[0]][: group.shared]
        for i in group.members:
            assert list(sequences[i][: group.shared]) == list(head)
            assert 1 <= len(sequences[i]) - group.shared <= max_rest


def best_by_brute_force(sequences, *, min_shared, max_members, max_rest) -> int:
    """Most tokens saved over every split of the sorted sequences into runs of neighbours."""
    order = sorted(range(len(sequences)), key=lambda i: tuple(sequences[i]))
    best = 0
    for cuts in itertools.product([False, True], repeat=max(len(order) - 1, 0)):
        runs, current = [], [order[0]]
        for cut, index in zip(cuts, order[1:]):
            if cut:
                runs.append(current)
                current = []
            current.append(index)
        runs.append(current)
        total = 0
        for run in runs:
            if len(run) == 1:
                continue
            common = min(common_prefix_length(sequences[run[0]], sequences[i]) for i in run[1:])
            shared = min(common, min(len(sequences[i]) for i in run) - 1)
            rest = max(len(sequences[i]) for i in run) - shared
            if len(run) > max_members or shared < min_shared or rest > max_rest:
                total = -1
                break
            total += (len(run) - 1) * shared
        best = max(best, total)
    return best


def test_grouping_joins_one_node_candidates():
    head_a, head_b = list(range(100, 140)), list(range(200, 250))
    sequences = [
        head_a + [1, 2],
        head_b + [5],
        head_a + [3],
        [7, 8, 9],
        head_b + [6, 6, 6],
        head_a + [4, 4],
    ]
    groups = group_by_shared_prefix(sequences, min_shared=8, max_members=8, max_rest=16)
    by_members = {tuple(sorted(g.members)): g.shared for g in groups}
    assert by_members == {(0, 2, 5): 40, (1, 4): 50, (3,): 0}


def test_grouping_identical_prompts_keep_one_token():
    sequences = [[1, 2, 3, 4]] * 3
    (group,) = group_by_shared_prefix(sequences, min_shared=1, max_members=4, max_rest=4)
    assert sorted(group.members) == [0, 1, 2]
    assert group.shared == 3


def test_grouping_skips_short_shared_start():
    sequences = [[1, 2, 3, 10, 11], [1, 2, 3, 20, 21]]
    groups = group_by_shared_prefix(sequences, min_shared=4, max_members=4, max_rest=8)
    assert sorted(g.members for g in groups) == [(0,), (1,)]


def test_grouping_keeps_member_and_rest_limits():
    head = list(range(50))
    sequences = [head + [i] * (1 + i) for i in range(10)]
    groups = group_by_shared_prefix(sequences, min_shared=4, max_members=3, max_rest=6)
    check_valid(groups, sequences, min_shared=4, max_members=3, max_rest=6)
    assert max(len(g.members) for g in groups) == 3


def random_sequences(rng: random.Random) -> list[list[int]]:
    stems = [[rng.randint(0, 2) for _ in range(rng.randint(0, 6))] for _ in range(2)]
    return [rng.choice(stems) + [rng.randint(0, 2) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 6))]


@pytest.mark.parametrize("seed", range(60))
def test_grouping_finds_best_neighbour_runs(seed):
    rng = random.Random(seed)
    sequences = random_sequences(rng)
    limits = dict(min_shared=rng.randint(1, 3), max_members=rng.randint(1, 4), max_rest=rng.randint(1, 6))
    groups = group_by_shared_prefix(sequences, **limits)
    check_valid(groups, sequences, **limits)
    assert saved(groups) == best_by_brute_force(sequences, **limits)


def test_grouping_bad_limits_name_value():
    with pytest.raises(ValueError, match="min_shared=0"):
        group_by_shared_prefix([[1]], min_shared=0, max_members=4, max_rest=4)
