"""The real SmolLM2-135M-Instruct runs GSM8K problems through all three stages with each reward backend.

Correctness is forced per problem (one always right, one always wrong) so that Stage 2 and
Stage 3 each receive a problem whatever this small model writes; routing itself is tested with
a scripted policy in test_search_routing.py. Everything else here is real: model, tokenizer,
sampler, search, rewards, answer extraction and the checker's worker processes.
"""

from __future__ import annotations

import copy
import json

import pytest
from flax import nnx

from sphere_jax.data import load_problems
from sphere_jax.data.problem import Problem
from sphere_jax.grading import AnswerChecker, Verdict
from sphere_jax.models.prm import ProcessRewardModel
from sphere_jax.sampling.sampler import SamplerConfig
from sphere_jax.search import stages
from sphere_jax.search.config import GeneratorConfig, RewardConfig, SearchConfig
from sphere_jax.search.generator import GenerationModels, Generator
from sphere_jax.search.policy import SamplerPolicy
from sphere_jax.search.rewards import PRMReward, RolloutReward, SelfJudgeReward

ALWAYS_RIGHT, ALWAYS_WRONG = "always-right", "always-wrong"
SEARCH = SearchConfig(candidates=2, max_depth=2, max_step_tokens=24)
SAMPLER = SamplerConfig(
    max_cache_length=1024, prompt_buckets=(256, 512), new_token_buckets=(32,), batch_buckets=(16,)
)


class ForcedChecker:
    """The real checker, except for the two sentinel gold answers."""

    def __init__(self, checker: AnswerChecker):
        self.checker = checker

    def check_many(self, pairs):
        verdicts = self.checker.check_many(pairs)
        forced = {ALWAYS_RIGHT: Verdict(True, "equal"), ALWAYS_WRONG: Verdict(False, "not_equal")}
        return [forced.get(gold, verdict) for (gold, _), verdict in zip(pairs, verdicts)]


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(workers=1) as opened:
        yield ForcedChecker(opened)


@pytest.fixture(scope="module")
def policy(smollm2):
    return SamplerPolicy(
        "smollm2",
        smollm2.model,
        smollm2.tokenizer,
        step_delimiter=SEARCH.step_delimiter,
        temperature=0.8,
        top_p=1.0,
        max_step_tokens=SEARCH.max_step_tokens,
        sampler_config=SAMPLER,
    )


@pytest.fixture(scope="module")
def problems():
    real = load_problems("gsm8k:train", limit=2).problems
    return [
        Problem(real[0].id, real[0].question, ALWAYS_RIGHT, "gsm8k", "train"),
        Problem(real[1].id, real[1].question, ALWAYS_WRONG, "gsm8k", "train"),
    ]


def make_reward(backend, policy, checker, smollm2):
    if backend == "rollout":
        return RolloutReward(policy, checker, rollouts=2, max_tokens=32, delimiter=SEARCH.step_delimiter)
    if backend == "self_judge":
        from sphere_jax.search.config import PromptConfig

        return SelfJudgeReward(policy, PromptConfig().text("judge_user"), delimiter=SEARCH.step_delimiter)
    tokenizer = copy.deepcopy(smollm2.tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    cfg = smollm2.config.replace(
        family="qwen2", attention_bias=True, num_labels=2, architecture="Qwen2ForProcessRewardModel",
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
        num_kv_heads=1, head_dim=16,
    )
    return PRMReward(ProcessRewardModel(cfg, rngs=nnx.Rngs(0)), tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["rollout", "self_judge", "prm"])
def test_real_model_through_three_stages(tmp_path, backend, smollm2, policy, checker, problems):
    reward = make_reward(backend, policy, checker, smollm2)
    config = GeneratorConfig(search=SEARCH, reward=RewardConfig(backend="rollout"), problems_per_batch=2)
    models = GenerationModels(policy, reward, small_policy=policy, small_reward=reward)
    stats = Generator(models, checker, config).run(problems, tmp_path)

    trees = [json.loads(line) for line in (tmp_path / "trees.jsonl").read_text().splitlines()]
    assert [t["route"] for t in trees] == [stages.DIVERSITY, stages.SELF_CORRECTION]
    assert "stage3" in trees[0]
    assert "stage2" in trees[1]
    for tree, stage in ((trees[0], "stage3"), (trees[1], "stage2")):
        for search in (tree["stage1"], tree[stage]):
            for side in ("max_chain", "min_chain"):
                steps = search[side]["steps"]
                assert 1 <= len(steps) <= SEARCH.max_depth
                for step in steps:
                    assert 0.0 <= step["score"] <= 1.0
                    width = 2 * SEARCH.candidates if stage == "stage3" and search is tree[stage] else SEARCH.candidates
                    assert len(step["candidates"]) == width
    # The max chain's first step has the highest first-step reward among the root candidates.
    root = trees[0]["stage1"]["max_chain"]["steps"][0]
    assert root["score"] == max(c["score"] for c in root["candidates"])
    assert stats["problems"] == 2
    assert stats["tokens_generated"] > 0
    assert set(stats["seconds"]) == {"sampling_s", "reward_s", "checking_s", "host_s", "total_s"}
