"""Routing and pairs of the three stages with a scripted policy and reward whose answers are known."""

from __future__ import annotations

import json
import re

import pytest

from sphere_jax.data.problem import Problem
from sphere_jax.search import stages
from sphere_jax.search.config import GeneratorConfig, SearchConfig
from sphere_jax.search.generator import GenerationModels, Generator
from scripted_search import InProcessChecker, ScriptedPolicy, ScriptedReward

E = 3
POLICY_SCRIPT = {
    # Q1: best step leads to the right answer, worst to a wrong one -> Stage 1.
    "Q1": ["[r=0.2] guess \\boxed{7}", "[r=0.9] compute \\boxed{5}", "[r=0.5] think"],
    "Q1</policy>\n[r=0.5]": ["never used"] * E,
    # Q2: two-step chains, both wrong -> Stage 2; the correction prompt gets a right answer.
    "Q2": ["[r=0.6] first", "[r=0.3] other", "[r=0.1] bad start"],
    "[r=0.6] first": ["[r=0.7] so \\boxed{8}", "[r=0.65] so \\boxed{9}", "[r=0.8] so \\boxed{11}"],
    "[r=0.1] bad start": ["[r=0.2] \\boxed{1}", "[r=0.05] \\boxed{2}", "[r=0.3] \\boxed{3}"],
    "earlier attempt at this problem": ["[r=0.9] fixed \\boxed{10}", "[r=0.4] still \\boxed{12}", "[r=0.5] hmm \\boxed{10}"],
    # Q3: both right -> Stage 3; the small model finds a plausible wrong chain.
    "Q3": ["[r=0.9] \\boxed{4}", "[r=0.8] \\boxed{4}", "[r=0.1] \\boxed{2+2}"],
    # Q4: max wrong, min right -> inverted.
    "Q4": ["[r=0.9] \\boxed{0}", "[r=0.5] \\boxed{0}", "[r=0.1] \\boxed{6}"],
}
SMALL_SCRIPT = {
    "Q3": [f"[r=0.{9 - i}] \\boxed{{{4 if i < 3 else 5}}}" for i in range(2 * E)],
}
PROBLEMS = [
    Problem("t:1", "Q1", "5", "t", "train"),
    Problem("t:2", "Q2", "10", "t", "train"),
    Problem("t:3", "Q3", "4", "t", "train"),
    Problem("t:4", "Q4", "6", "t", "train"),
]


def run(tmp_path, inverted="drop"):
    policy = ScriptedPolicy("policy", POLICY_SCRIPT)
    small = ScriptedPolicy("small", SMALL_SCRIPT)
    config = GeneratorConfig(search=SearchConfig(candidates=E, max_depth=3), inverted=inverted, problems_per_batch=4)
    models = GenerationModels(policy, ScriptedReward(), small, ScriptedReward())
    stats = Generator(models, InProcessChecker(), config).run(PROBLEMS, tmp_path)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    trees = {r["id"]: r for r in map(json.loads, (tmp_path / "trees.jsonl").read_text().splitlines())}
    return stats, pairs, trees, policy, small


def test_each_stage_receives_its_problems(tmp_path):
    stats, pairs, trees, policy, small = run(tmp_path)
    assert {k: trees[k]["route"] for k in trees} == {
        "t:1": stages.SELF_GENERATION,
        "t:2": stages.SELF_CORRECTION,
        "t:3": stages.DIVERSITY,
        "t:4": stages.INVERTED,
    }
    assert "stage2" in trees["t:2"] and all("stage2" not in trees[k] for k in ("t:1", "t:3", "t:4"))
    assert "stage3" in trees["t:3"] and all("stage3" not in trees[k] for k in ("t:1", "t:2", "t:4"))
    assert stats["problems_per_route"] == {
        stages.SELF_GENERATION: 1, stages.SELF_CORRECTION: 1, stages.DIVERSITY: 1, stages.INVERTED: 1,
    }
    # Only Q3 reached the small model, with 2E candidates per expansion.
    assert all("Q3" in prompt for prompt in small.requests)


def test_max_and_min_follow_the_reward(tmp_path):
    _, pairs, trees, _, _ = run(tmp_path)
    q2 = trees["t:2"]["stage1"]
    assert [s["text"] for s in q2["max_chain"]["steps"]] == ["[r=0.6] first", "[r=0.8] so \\boxed{11}"]
    assert [s["text"] for s in q2["min_chain"]["steps"]] == ["[r=0.1] bad start", "[r=0.05] \\boxed{2}"]
    second = q2["max_chain"]["steps"][1]
    assert second["score"] == 0.8
    assert second["advantage"] == pytest.approx(0.8 - 0.6)
    assert q2["max_chain"]["steps"][0]["advantage"] == 0.6  # the first step's reward is its raw score


def test_pairs_per_stage(tmp_path):
    stats, pairs, trees, _, _ = run(tmp_path)
    by_stage = {}
    for pair in pairs:
        by_stage.setdefault(pair["stage"], []).append(pair)
    assert sorted(by_stage) == [stages.DIVERSITY, stages.SELF_CORRECTION, stages.SELF_GENERATION]
    (p1,) = by_stage[stages.SELF_GENERATION]
    assert (p1["chosen"], p1["rejected"]) == ("[r=0.9] compute \\boxed{5}", "[r=0.2] guess \\boxed{7}")
    assert p1["problem_id"] == "t:1"
    assert p1["prompt"] == "<policy>Q1</policy>\n"
    assert p1["iteration"] == 0
    (p2,) = by_stage[stages.SELF_CORRECTION]
    assert p2["chosen"] == "[r=0.9] fixed \\boxed{10}"
    assert p2["rejected"] == "[r=0.4] still \\boxed{12}"
    (p3,) = by_stage[stages.DIVERSITY]
    assert p3["chosen"] == "[r=0.9] \\boxed{4}"
    assert p3["rejected"] == "[r=0.4] \\boxed{5}"  # the small model's min chain: plausible and wrong
    assert stats["pairs_per_stage"][stages.INVERTED] == 0
    assert stats["pairs"] == 3


def test_inverted_swap_makes_a_pair(tmp_path):
    stats, pairs, _, _, _ = run(tmp_path, inverted="swap")
    (swapped,) = [p for p in pairs if p["stage"] == stages.INVERTED]
    assert (swapped["chosen"], swapped["rejected"]) == ("[r=0.1] \\boxed{6}", "[r=0.9] \\boxed{0}")
    assert stats["pairs"] == 4


def test_rerun_skips_finished_problems(tmp_path):
    run(tmp_path)
    first = (tmp_path / "pairs.jsonl").read_text()
    _, _, _, policy, _ = run(tmp_path)
    assert policy.requests == []  # nothing searched again
    assert (tmp_path / "pairs.jsonl").read_text() == first


def test_invalid_generator_config():
    with pytest.raises(ValueError, match="generate.inverted='flip' is not one of swap, drop"):
        GeneratorConfig(inverted="flip")
    with pytest.raises(ValueError, match="search.candidates=1: need at least 2"):
        SearchConfig(candidates=1)


def test_fallback_skips_depth_cut_chains(tmp_path):
    # One-step chains with no marked answer end at the depth limit. Their last numbers (6 is the
    # gold) are intermediate values, so with the last_number fallback both chains still count as
    # wrong and the problem goes to self-correction, not to Stage 1.
    policy = ScriptedPolicy("policy", {"Q5": ["[r=0.9] she has 6 now", "[r=0.5] she had 4", "[r=0.1] 3 left"]})
    config = GeneratorConfig(
        search=SearchConfig(candidates=E, max_depth=1, answer_fallback="last_number"), problems_per_batch=1
    )
    models = GenerationModels(policy, ScriptedReward(), None, None)
    Generator(models, InProcessChecker(), config).run([Problem("t:5", "Q5", "6", "t", "train")], tmp_path)
    (tree,) = map(json.loads, (tmp_path / "trees.jsonl").read_text().splitlines())
    assert tree["route"] == stages.SELF_CORRECTION
    assert (tmp_path / "pairs.jsonl").read_text() == ""
