"""Time the self_judge step reward with and without a shared prefill per search node.

The script rebuilds the verification prompts that the search scored, depth by depth, from
Stage 1 of the first problems in a finished generation's trees.jsonl. It scores each depth's
prompts in one call, as the search does: once with every prompt prefilled whole, and once with
the shared start of each node's prompts prefilled once.

    python scripts/bench_judge.py --config configs/cpu_demo.yaml \
        --trees runs/cpu_demo/iter0/generate/trees.jsonl --problems 2

Each mode runs twice and the second pass is timed, so compilation is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def depth_queries(trees: list[dict]) -> list[list]:
    """StepQuery lists, one per depth, for Stage 1 of every tree: what one reward call scores."""
    from sphere_jax.search.rewards import StepQuery

    by_depth: dict[int, list] = {}
    for tree in trees:
        search = tree["stage1"]
        for side in ("max_chain", "min_chain"):
            steps = search[side]["steps"]
            for depth, step in enumerate(steps):
                if depth == 0 and side == "min_chain":
                    continue  # both chains start from the same root node
                before = tuple(s["text"] for s in steps[:depth])
                for candidate in step["candidates"]:
                    query = StepQuery(tree["question"], tree["gold"], search["prompt"], before, candidate["text"])
                    by_depth.setdefault(depth, []).append(query)
    return [by_depth[d] for d in sorted(by_depth)]


class PromptRecorder:
    """A stand-in policy that renders like the real one and records the prompts it is asked to score."""

    def __init__(self, policy):
        self.policy = policy
        self.prompts: list[str] = []

    def render(self, user: str, system: str | None) -> str:
        return self.policy.render(user, system)

    def yes_probability(self, prompts):
        self.prompts = list(prompts)
        return [0.0] * len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="run config: policy, sampler buckets, prompts")
    parser.add_argument("--trees", type=Path, required=True, help="trees.jsonl of a finished generation")
    parser.add_argument("--problems", type=int, default=2, help="use Stage 1 of the first N trees")
    parser.add_argument("--output", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()

    from sphere_jax.pipeline.config import load_run_config
    from sphere_jax.pipeline.loop import _make_policy
    from sphere_jax.sampling.prefix_groups import group_by_shared_prefix
    from sphere_jax.search.rewards import SelfJudgeReward
    from sphere_jax.weights.load import load_model

    config = load_run_config(args.config, [])
    trees = [json.loads(line) for line in args.trees.read_text().splitlines()][: args.problems]
    if not trees:
        parser.error(f"--trees {args.trees} holds no trees")
    loaded = load_model(config.policy.source, param_dtype=config.policy.dtype, compute_dtype=config.policy.dtype)
    policy = _make_policy("policy", loaded, config)
    recorder = PromptRecorder(policy)
    reward = SelfJudgeReward(recorder, config.generate.prompts.text("judge_user"), delimiter="\n\n")
    calls = []
    for queries in depth_queries(trees):
        reward.score(queries)
        calls.append(recorder.prompts)

    sampler, token_ids = policy.sampler, [*policy._yes_no_ids[0], *policy._yes_no_ids[1]]
    encoded = [[loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts] for prompts in calls]
    whole_tokens = sum(len(ids) for call in encoded for ids in call)
    shared_tokens = 0
    for call in encoded:
        groups = group_by_shared_prefix(
            call,
            min_shared=sampler.config.min_shared_prefix,
            max_members=sampler.config.batch_buckets[-1],
            max_rest=sampler.config.new_token_buckets[-1],
        )
        shared_tokens += sum(g.shared + sum(len(call[i]) - g.shared for i in g.members) for g in groups)

    results, seconds = {}, {}
    for mode, share in (("whole", False), ("shared", True)):
        for _ in range(2):
            started = time.perf_counter()
            results[mode] = [sampler.next_token_logprobs(p, token_ids, share_prefixes=share) for p in calls]
            seconds[mode] = time.perf_counter() - started  # the second pass is kept
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(results["whole"], results["shared"]))
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "policy": config.policy.source,
        "problems": len(trees),
        "calls": len(calls),
        "prompts": sum(len(c) for c in calls),
        "prompt_tokens_whole": whole_tokens,
        "prompt_tokens_shared": shared_tokens,
        "seconds_whole": round(seconds["whole"], 2),
        "seconds_shared": round(seconds["shared"], 2),
        "speedup": round(seconds["whole"] / seconds["shared"], 2),
        "max_abs_logprob_difference": difference,
    }
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
