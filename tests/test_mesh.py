"""Tests of sphere_jax.training.mesh.

The partition-spec rules are checked in this process on an `AbstractMesh`, which needs no devices. Placing arrays
on a real mesh needs several devices, and XLA creates fake CPU devices only if `XLA_FLAGS` requests them before jax
is imported. So `test_multi_device_suite_passes` runs this same file again in a child pytest process with 8 fake
CPU devices, where the tests marked `eight_devices` run and the others are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from sphere_jax.training.mesh import (
    DEFAULT_RULES,
    MESH_AXES,
    batch_sharding,
    logical_to_partition_spec,
    logical_to_sharding,
    make_mesh,
    shard_batch,
    shard_pytree,
    tree_shardings,
)

CHILD_ENV_FLAG = "SPHERE_JAX_TEST_EIGHT_DEVICES"
IN_CHILD = os.environ.get(CHILD_ENV_FLAG) == "1"
eight_devices = pytest.mark.skipif(not IN_CHILD, reason="runs in the 8-device child started by the suite test")
parent_only = pytest.mark.skipif(IN_CHILD, reason="runs in the parent pytest process only")


def abstract_mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), MESH_AXES)


# ---- Partition specs, checked on an abstract mesh --------------------------------------------------------------


@parent_only
@pytest.mark.parametrize(
    ("logical_axes", "shape", "expected"),
    [
        (("vocab", "embed"), (256, 64), PartitionSpec("tensor", "fsdp")),
        (("embed", "mlp"), (64, 512), PartitionSpec("fsdp", "tensor")),
        (("embed", "heads", "head_dim"), (64, 8, 16), PartitionSpec("fsdp", "tensor", None)),
        (("layers", "embed", "mlp"), (4, 64, 512), PartitionSpec(None, "fsdp", "tensor")),
        (("norm",), (64,), PartitionSpec(None)),
        ((None, "embed"), (3, 64), PartitionSpec(None, "fsdp")),
        ((), (), PartitionSpec()),
    ],
)
def test_default_rules_map_parameters(logical_axes, shape, expected):
    spec = logical_to_partition_spec(logical_axes, shape, abstract_mesh(1, 4, 2))
    assert spec == expected


@parent_only
def test_indivisible_kv_heads_stay_replicated():
    mesh = abstract_mesh(1, 2, 4)
    assert logical_to_partition_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == PartitionSpec(
        "fsdp", None, None
    )
    assert logical_to_partition_spec(("embed", "kv_heads", "head_dim"), (64, 8, 16), mesh) == PartitionSpec(
        "fsdp", "tensor", None
    )


@parent_only
@pytest.mark.parametrize(
    ("batch_size", "expected"),
    [(8, ("data", "fsdp")), (16, ("data", "fsdp")), (6, "data"), (4, "data"), (3, None)],
)
def test_batch_rule_drops_axes_that_do_not_divide(batch_size, expected):
    spec = logical_to_partition_spec(("batch", "length"), (batch_size, 32), abstract_mesh(2, 4, 1))
    assert spec == PartitionSpec(expected, None)


@parent_only
def test_mesh_axis_used_once_per_array():
    spec = logical_to_partition_spec(("embed", "embed"), (64, 64), abstract_mesh(1, 4, 2))
    assert spec == PartitionSpec("fsdp", None)


@parent_only
def test_size_one_mesh_axes_are_left_out():
    spec = logical_to_partition_spec(("vocab", "embed"), (256, 64), abstract_mesh(8, 1, 1))
    assert spec == PartitionSpec(None, None)


@parent_only
def test_custom_rules_override_defaults():
    rules = {**DEFAULT_RULES, "embed": None, "mlp": ("fsdp", "tensor")}
    spec = logical_to_partition_spec(("embed", "mlp"), (64, 512), abstract_mesh(1, 4, 2), rules)
    assert spec == PartitionSpec(None, ("fsdp", "tensor"))


@parent_only
def test_rank_mismatch_raises():
    with pytest.raises(ValueError, match="one logical name"):
        logical_to_partition_spec(("embed",), (64, 64), abstract_mesh(1, 4, 2))


@parent_only
def test_unknown_logical_axis_raises():
    with pytest.raises(ValueError, match="'experts' has no rule"):
        logical_to_partition_spec(("experts", "embed"), (8, 64), abstract_mesh(1, 4, 2))


@parent_only
def test_rule_naming_missing_mesh_axis_raises():
    with pytest.raises(ValueError, match="pipeline"):
        logical_to_partition_spec(("embed",), (64,), abstract_mesh(1, 4, 2), {"embed": "pipeline"})


@parent_only
def test_default_mesh_on_one_device():
    mesh = make_mesh(devices=jax.devices()[:1])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert mesh.axis_names == MESH_AXES


@parent_only
def test_multi_device_suite_passes():
    env = dict(os.environ)
    env[CHILD_ENV_FLAG] = "1"
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"8-device child pytest failed:\n{result.stdout}\n{result.stderr}"
    assert " passed" in result.stdout


# ---- Real meshes, run in the 8-device child ---------------------------------------------------------------------


@eight_devices
def test_child_sees_eight_cpu_devices():
    assert jax.device_count() == 8
    assert jax.devices()[0].platform == "cpu"


@eight_devices
def test_default_mesh_puts_all_devices_on_fsdp():
    mesh = make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert all(axis_type == jax.sharding.AxisType.Auto for axis_type in mesh.axis_types)


@eight_devices
@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ({"data": 2, "fsdp": -1}, {"data": 2, "fsdp": 4, "tensor": 1}),
        ({"fsdp": -1, "tensor": 2}, {"data": 1, "fsdp": 4, "tensor": 2}),
        ({"data": -1, "fsdp": 2, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}),
        ({"data": 2, "fsdp": 4}, {"data": 2, "fsdp": 4, "tensor": 1}),
        ({"tensor": 8}, {"data": 1, "fsdp": 1, "tensor": 8}),
    ],
)
def test_mesh_shape_resolves(shape, expected):
    assert dict(make_mesh(shape).shape) == expected


@eight_devices
def test_mesh_over_device_subset():
    mesh = make_mesh({"fsdp": -1}, devices=jax.devices()[:4])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    assert set(mesh.devices.flat) == set(jax.devices()[:4])


@eight_devices
@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ({"data": 3, "fsdp": -1}, r"Mesh shape \{'data': 3, 'fsdp': -1\} does not fit 8 devices"),
        ({"data": 2, "fsdp": 2}, r"needs 4 devices but 8 are available"),
        ({"data": 16}, r"needs 16 devices but 8 are available"),
        ({"data": -1, "fsdp": -1}, r"at most one axis may be -1"),
        ({"model": 8}, r"Unknown mesh axes \['model'\]"),
        ({"fsdp": 0}, r"size 0"),
        ({"fsdp": 2.0}, r"size 2.0"),
    ],
)
def test_impossible_mesh_shape_raises(shape, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(shape)


@eight_devices
def test_shard_pytree_splits_parameters():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    params = {
        "embedding": np.arange(32 * 16, dtype=np.float32).reshape(32, 16),
        "k_proj": np.arange(16 * 2 * 4, dtype=np.float32).reshape(16, 2, 4),
        "norm": np.ones(16, np.float32),
        "step_scale": np.float32(0.5),
    }
    axes = {
        "embedding": ("vocab", "embed"),
        "k_proj": ("embed", "kv_heads", "head_dim"),
        "norm": ("norm",),
        "step_scale": None,
    }
    sharded = shard_pytree(params, axes, mesh)

    assert sharded["embedding"].sharding.spec == PartitionSpec("tensor", "fsdp")
    assert {shard.data.shape for shard in sharded["embedding"].addressable_shards} == {(8, 8)}
    # 2 KV heads do not divide the 4-way tensor axis, so they stay whole on every device.
    assert sharded["k_proj"].sharding.spec == PartitionSpec("fsdp", None, None)
    assert {shard.data.shape for shard in sharded["k_proj"].addressable_shards} == {(8, 2, 4)}
    assert sharded["norm"].sharding.is_fully_replicated
    assert sharded["step_scale"].sharding.is_fully_replicated
    for name, value in params.items():
        np.testing.assert_array_equal(np.asarray(sharded[name]), value, err_msg=name)


@eight_devices
def test_tree_shardings_accept_shape_structs():
    mesh = make_mesh({"data": 2, "fsdp": 4})
    abstract = {"w": jax.ShapeDtypeStruct((64, 12), np.float32)}
    shardings = tree_shardings(abstract, {"w": ("embed", "mlp")}, mesh)
    assert shardings["w"] == logical_to_sharding(("embed", "mlp"), (64, 12), mesh)
    assert shardings["w"].spec == PartitionSpec("fsdp", None)


@eight_devices
def test_sharded_matmul_matches_numpy():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(16, 32)).astype(np.float32)
    inputs = rng.normal(size=(8, 16)).astype(np.float32)
    sharded_weights = shard_pytree({"w": weights}, {"w": ("embed", "mlp")}, mesh)["w"]
    sharded_inputs = shard_batch({"x": inputs}, mesh)["x"]

    outputs = jax.jit(lambda x, w: x @ w)(sharded_inputs, sharded_weights)
    np.testing.assert_allclose(np.asarray(outputs), inputs @ weights, rtol=1e-5, atol=1e-5)


@eight_devices
def test_shard_batch_splits_rows_over_data_and_fsdp():
    mesh = make_mesh({"data": 2, "fsdp": 4})
    batch = {"input_ids": np.arange(16 * 3).reshape(16, 3), "weights": np.ones(16, np.float32)}
    sharded = shard_batch(batch, mesh)

    assert sharded["input_ids"].sharding == batch_sharding(mesh, 2)
    assert {shard.data.shape for shard in sharded["input_ids"].addressable_shards} == {(2, 3)}
    assert {shard.data.shape for shard in sharded["weights"].addressable_shards} == {(2,)}
    np.testing.assert_array_equal(np.asarray(sharded["input_ids"]), batch["input_ids"])


@eight_devices
def test_shard_batch_rejects_indivisible_batch():
    mesh = make_mesh({"data": 2, "fsdp": 4})
    with pytest.raises(ValueError, match=r"\['input_ids'\] has shape \(6, 3\).*multiple of 8"):
        shard_batch({"input_ids": np.zeros((6, 3))}, mesh)
