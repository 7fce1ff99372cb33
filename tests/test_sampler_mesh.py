"""The sampler on one device and under a mesh of 8 virtual CPU devices gives the same greedy tokens.

The mesh needs `--xla_force_host_platform_device_count`, which only takes effect before jax is
imported, so the comparison runs in a fresh subprocess that runs this file as a script. The
child prints one JSON line that the tests read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

DEVICE_COUNT = 8
MESHES = {
    # Rows split 4 ways over data, and weights split over tensor. SmolLM2-135M has 9 query and 3 KV
    # heads, which 2 does not divide, so only the vocabulary and MLP weights are split.
    "data4_tensor2": {"data": 4, "fsdp": 1, "tensor": 2},
    # Rows split 4 ways over data on half the devices, with every weight replicated.
    "data4_replicated": {"data": 4, "fsdp": 1, "tensor": 1},
}
# Four short and four long prompts, so the prefill runs in two tiers (16 and 64 slots), each
# with rows split over the data axis.
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "The best way to learn Python is",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    "Question: A train travels 60 miles per hour for 3 hours and then 40 miles per hour for 2 hours. "
    "How far does it travel in total?\nAnswer: Let's think step by step.",
    "Question: Sara reads 12 pages a day. Her book has 150 pages and she has read 66. How many more days "
    "does she need to finish it?\nAnswer:",
    "Question: A shop sells pencils at 3 for 1 dollar. How many dollars do 27 pencils cost?\nAnswer:",
]
NEW_TOKENS = 16


def run_child() -> None:
    """Sample greedily without a mesh and under each mesh, then print the results as one JSON line."""
    import jax

    from sphere_jax.sampling.params import SamplingParams
    from sphere_jax.sampling.prefill_plan import plan_prefill_tiers
    from sphere_jax.sampling.sampler import Sampler, SamplerConfig
    from sphere_jax.training.mesh import make_mesh
    from sphere_jax.weights.load import load_model

    loaded = load_model("packaged:smollm2-135m-instruct")
    config = SamplerConfig(
        max_cache_length=256,
        prompt_buckets=(16, 64),
        new_token_buckets=(NEW_TOKENS,),
        batch_buckets=(4, 8),
    )
    params = SamplingParams(temperature=0.0, max_new_tokens=NEW_TOKENS)
    lengths = sorted(len(loaded.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS)
    tiers = plan_prefill_tiers(lengths, config.prompt_buckets, config.batch_buckets, call_cost=config.prefill_call_cost)

    def sample(mesh) -> dict:
        sampler = Sampler(loaded.model, loaded.tokenizer, config=config, mesh=mesh)
        completions = [row[0] for row in sampler.generate(PROMPTS, params)]
        tensor_split = [
            str(leaf.sharding.spec)
            for leaf in jax.tree.leaves(sampler._weights)
            if mesh is not None and "tensor" in str(leaf.sharding.spec)
        ]
        return {
            "token_ids": [c.token_ids for c in completions],
            "logprobs": [c.logprobs for c in completions],
            "finish_reasons": [c.finish_reason for c in completions],
            "weight_device_counts": sorted({len(leaf.sharding.device_set) for leaf in jax.tree.leaves(sampler._weights)}),
            "tensor_split_weights": len(tensor_split),
        }

    results = {"devices": jax.device_count(), "tiers": [[t.rows, t.slots] for t in tiers], "reference": sample(None)}
    for name, shape in MESHES.items():
        device_count = shape["data"] * shape["fsdp"] * shape["tensor"]
        results[name] = sample(make_mesh(shape, devices=jax.devices()[:device_count]))
    print(json.dumps(results))


@pytest.fixture(scope="module")
def child_results() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICE_COUNT}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["HF_HUB_OFFLINE"] = "1"
    completed = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, f"mesh sampling subprocess failed:\n{completed.stderr[-4000:]}"
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_child_sees_virtual_devices(child_results):
    assert child_results["devices"] == DEVICE_COUNT


@pytest.mark.slow
def test_prefill_runs_in_two_tiers(child_results):
    assert child_results["tiers"] == [[4, 16], [4, 64]]


@pytest.mark.slow
def test_reference_runs_full_length(child_results):
    reference = child_results["reference"]
    for index in range(len(PROMPTS)):
        assert reference["finish_reasons"][index] == "length", f"prompt {index}"
        assert len(reference["token_ids"][index]) == NEW_TOKENS, f"prompt {index}"
    assert reference["weight_device_counts"] == [1]


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_mesh_greedy_tokens_match_single_device(child_results, mesh_name):
    reference, sharded = child_results["reference"], child_results[mesh_name]
    for index in range(len(PROMPTS)):
        assert sharded["token_ids"][index] == reference["token_ids"][index], f"prompt {index}: {PROMPTS[index]!r}"
        assert sharded["finish_reasons"][index] == reference["finish_reasons"][index], f"prompt {index}"


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_mesh_logprobs_match_single_device(child_results, mesh_name):
    reference, sharded = child_results["reference"], child_results[mesh_name]
    for index in range(len(PROMPTS)):
        assert sharded["logprobs"][index] == pytest.approx(reference["logprobs"][index], abs=1e-4), f"prompt {index}"


@pytest.mark.slow
def test_tensor_mesh_splits_weights(child_results):
    sharded = child_results["data4_tensor2"]
    assert sharded["tensor_split_weights"] > 0
    assert max(sharded["weight_device_counts"]) == 8


@pytest.mark.slow
def test_replicated_mesh_keeps_weights_whole(child_results):
    sharded = child_results["data4_replicated"]
    assert sharded["tensor_split_weights"] == 0
    assert sharded["weight_device_counts"] == [4]


if __name__ == "__main__":
    run_child()
