"""Tests of sphere_jax.training.checkpointing with real Orbax, and of the optimizer whose state it saves.

Cross-mesh tests save in one Python process and restore in another, each with its own number of fake CPU devices,
because XLA fixes the device count when jax is imported. The saving process also writes the expected values to an
.npz file next to the checkpoint, so the restoring process compares exact values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import SingleDeviceSharding

from sphere_jax.training.checkpointing import (
    CheckpointConfig,
    NonFiniteError,
    TrainingCheckpoint,
    TrainingCheckpointer,
    check_finite,
    optimizer_state_target,
    restore_target,
)
from sphere_jax.training.schedule import OptimizerConfig, make_optimizer, make_schedule

# One script for both sides of the cross-mesh tests: argv is (mode, directory, mesh shape as JSON).
CROSS_MESH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from sphere_jax.training import checkpointing, mesh, schedule

    mode, directory, mesh_shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    device_mesh = mesh.make_mesh(mesh_shape)
    logical_axes = {
        "embedding": ("vocab", "embed"),
        "layer": {
            "q_proj": ("embed", "heads", "head_dim"),
            "k_proj": ("embed", "kv_heads", "head_dim"),
            "mlp_up": ("embed", "mlp"),
            "norm": ("norm",),
        },
    }
    rng = np.random.default_rng(0)
    host_params = {
        "embedding": rng.normal(size=(32, 16)).astype(np.float32),
        "layer": {
            "q_proj": rng.normal(size=(16, 4, 4)).astype(np.float32),
            "k_proj": rng.normal(size=(16, 2, 4)).astype(np.float32),
            "mlp_up": rng.normal(size=(16, 64)).astype(np.float32),
            "norm": np.ones(16, np.float32),
        },
    }
    optimizer, _ = schedule.make_optimizer(
        schedule.OptimizerConfig(learning_rate=1e-2, total_steps=10, warmup_steps=2, weight_decay=0.1)
    )

    def flatten(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}

    def specs_of(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {jax.tree_util.keystr(path): str(leaf.sharding.spec) for path, leaf in leaves}

    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host_params)
    params_target = checkpointing.restore_target(
        abstract_params, mesh.tree_shardings(abstract_params, logical_axes, device_mesh)
    )
    opt_state_target = checkpointing.optimizer_state_target(optimizer, params_target)
    config = checkpointing.CheckpointConfig(directory, save_interval_steps=1)

    if mode == "save":
        params = mesh.shard_pytree(host_params, logical_axes, device_mesh)
        opt_state_shardings = jax.tree.map(lambda leaf: leaf.sharding, opt_state_target)
        opt_state = jax.jit(optimizer.init, out_shardings=opt_state_shardings)(params)
        for _ in range(3):
            grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
            updates, opt_state = jax.jit(optimizer.update)(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        rng_key = jax.random.fold_in(jax.random.key(3), 7)
        checkpoint = checkpointing.TrainingCheckpoint(
            step=3, params=params, opt_state=opt_state, rng_key=rng_key,
            data_position={"epoch": 1, "index": 96}, metadata={"iteration": 2},
        )
        with checkpointing.TrainingCheckpointer(config) as checkpointer:
            checkpointer.save(checkpoint)
        expected = flatten({"params": params, "opt_state": opt_state})
        expected["key_data"] = np.asarray(jax.random.key_data(rng_key))
        np.savez(directory + "/expected.npz", **expected)
        print(json.dumps({"devices": jax.device_count(), "param_specs": specs_of(params)}))
    else:
        with checkpointing.TrainingCheckpointer(config) as checkpointer:
            restored = checkpointer.restore(params_target, opt_state_target)
        expected = np.load(directory + "/expected.npz")
        actual = flatten({"params": restored.params, "opt_state": restored.opt_state})
        assert set(actual) == set(expected) - {"key_data"}, (sorted(actual), sorted(expected))
        for name, value in actual.items():
            np.testing.assert_array_equal(value, expected[name], err_msg=name)
        np.testing.assert_array_equal(np.asarray(jax.random.key_data(restored.rng_key)), expected["key_data"])
        restored_tree = {"params": restored.params, "opt_state": restored.opt_state}
        target_tree = {"params": params_target, "opt_state": opt_state_target}
        same_sharding = jax.tree.map(lambda leaf, target: leaf.sharding == target.sharding, restored_tree, target_tree)
        assert all(jax.tree.leaves(same_sharding)), same_sharding
        print(json.dumps({
            "devices": jax.device_count(),
            "step": restored.step,
            "data_position": restored.data_position,
            "metadata": restored.metadata,
            "rng_key_typed": bool(jax.dtypes.issubdtype(restored.rng_key.dtype, jax.dtypes.prng_key)),
            "param_specs": specs_of(restored.params),
            "compared_arrays": len(actual),
        }))
    """
)


def run_cross_mesh(mode: str, directory: Path, device_count: int, mesh_shape: dict[str, int]) -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={device_count}"
    result = subprocess.run(
        [sys.executable, "-c", CROSS_MESH_SCRIPT, mode, str(directory), json.dumps(mesh_shape)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{mode} on {device_count} devices failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_save_on_eight_devices_restore_on_one(tmp_path):
    saved = run_cross_mesh("save", tmp_path, 8, {"data": 2, "fsdp": 4})
    restored = run_cross_mesh("restore", tmp_path, 1, {})

    assert saved["devices"] == 8
    assert saved["param_specs"]["['embedding']"] == "P(None, 'fsdp')"
    assert restored["devices"] == 1
    assert restored["step"] == 3
    assert restored["data_position"] == {"epoch": 1, "index": 96}
    assert restored["metadata"] == {"iteration": 2}
    assert restored["rng_key_typed"] is True
    # 5 params, Adam mu and nu of each, and the two step counts.
    assert restored["compared_arrays"] == 17


def test_save_on_one_device_restore_on_eight(tmp_path):
    saved = run_cross_mesh("save", tmp_path, 1, {})
    restored = run_cross_mesh("restore", tmp_path, 8, {"data": 2, "fsdp": 4})

    assert saved["devices"] == 1
    assert restored["devices"] == 8
    assert restored["param_specs"]["['embedding']"] == "P(None, 'fsdp')"
    assert restored["param_specs"]["['layer']['mlp_up']"] == "P('fsdp', None)"
    assert restored["step"] == 3
    assert restored["compared_arrays"] == 17


# ---- Single-process checkpoint tests ------------------------------------------------------------------------------


def one_device() -> SingleDeviceSharding:
    return SingleDeviceSharding(jax.devices()[0])


def small_state(step: int = 0, rng_key: jax.Array | None = None) -> TrainingCheckpoint:
    params = {"w": jnp.arange(12.0).reshape(3, 4) + step, "b": jnp.full((4,), float(step))}
    optimizer, _ = make_optimizer(OptimizerConfig(learning_rate=1e-2, total_steps=10))
    opt_state = optimizer.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = optimizer.update(grads, opt_state, params)
    return TrainingCheckpoint(
        step=step,
        params=params,
        opt_state=opt_state,
        rng_key=jax.random.key(step) if rng_key is None else rng_key,
        data_position={"index": 8 * step},
    )


def restore_small(checkpointer: TrainingCheckpointer, step: int | None = None) -> TrainingCheckpoint:
    template = small_state()
    return checkpointer.restore(
        restore_target(template.params, one_device()), restore_target(template.opt_state, one_device()), step=step
    )


def test_round_trip_preserves_every_field(tmp_path):
    original = small_state(step=5, rng_key=jax.random.fold_in(jax.random.key(11), 4))
    original.data_position = {"epoch": 2, "index": 1234, "shard": "stage_b/part-3"}
    original.metadata = {"sphere_iteration": 1, "stage": "b"}
    with TrainingCheckpointer(CheckpointConfig(tmp_path, save_interval_steps=1)) as checkpointer:
        assert checkpointer.save(original)
    # A fresh checkpointer, as after a restart, reads what the first one wrote.
    with TrainingCheckpointer(CheckpointConfig(tmp_path)) as checkpointer:
        restored = restore_small(checkpointer)

    assert restored.step == 5
    assert restored.data_position == {"epoch": 2, "index": 1234, "shard": "stage_b/part-3"}
    assert restored.metadata == {"sphere_iteration": 1, "stage": "b"}
    for name in ("w", "b"):
        np.testing.assert_array_equal(np.asarray(restored.params[name]), np.asarray(original.params[name]))
    original_leaves = jax.tree.leaves(original.opt_state)
    restored_leaves = jax.tree.leaves(restored.opt_state)
    assert len(restored_leaves) == len(original_leaves)
    for expected, actual in zip(original_leaves, restored_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(original.opt_state)


def test_typed_rng_key_round_trips(tmp_path):
    key = jax.random.fold_in(jax.random.key(42), 9)
    with TrainingCheckpointer(CheckpointConfig(tmp_path, save_interval_steps=1)) as checkpointer:
        checkpointer.save(small_state(step=1, rng_key=key))
        checkpointer.wait_until_finished()
        restored = restore_small(checkpointer)

    assert jax.dtypes.issubdtype(restored.rng_key.dtype, jax.dtypes.prng_key)
    assert str(jax.random.key_impl(restored.rng_key)) == str(jax.random.key_impl(key))
    np.testing.assert_array_equal(
        np.asarray(jax.random.normal(restored.rng_key, (5,))), np.asarray(jax.random.normal(key, (5,)))
    )


def test_legacy_uint32_rng_key_round_trips(tmp_path):
    key = jax.random.PRNGKey(123)
    with TrainingCheckpointer(CheckpointConfig(tmp_path, save_interval_steps=1)) as checkpointer:
        checkpointer.save(small_state(step=1, rng_key=key))
        checkpointer.wait_until_finished()
        restored = restore_small(checkpointer)

    assert restored.rng_key.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(restored.rng_key), np.asarray(key))


def test_max_to_keep_deletes_oldest(tmp_path):
    with TrainingCheckpointer(CheckpointConfig(tmp_path, save_interval_steps=1, max_to_keep=2)) as checkpointer:
        for step in range(1, 6):
            assert checkpointer.save(small_state(step))
        checkpointer.wait_until_finished()
        assert checkpointer.all_steps() == [4, 5]
        assert checkpointer.latest_step() == 5
        restored = restore_small(checkpointer, step=4)

    assert restored.data_position == {"index": 32}
    np.testing.assert_array_equal(np.asarray(restored.params["b"]), np.full(4, 4.0))
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.isdigit()) == ["4", "5"]


def test_save_interval_skips_steps_unless_forced(tmp_path):
    with TrainingCheckpointer(CheckpointConfig(tmp_path, save_interval_steps=3, max_to_keep=None)) as checkpointer:
        started = {step: checkpointer.save(small_state(step)) for step in range(1, 8)}
        assert checkpointer.save(small_state(8), force=True)
        checkpointer.wait_until_finished()
        steps = checkpointer.all_steps()

    assert [step for step, was_started in started.items() if was_started] == [3, 6]
    assert steps == [3, 6, 8]


def test_async_save_survives_deleted_arrays(tmp_path):
    """An async save copies the arrays before returning, so the trainer may donate its buffers to the next step."""
    state = small_state(step=4)
    expected_w = np.asarray(state.params["w"])
    with TrainingCheckpointer(CheckpointConfig(tmp_path, save_interval_steps=1, async_save=True)) as checkpointer:
        assert checkpointer.save(state)
        for leaf in jax.tree.leaves((state.params, state.opt_state)):
            leaf.delete()
        checkpointer.wait_until_finished()
        restored = restore_small(checkpointer)

    np.testing.assert_array_equal(np.asarray(restored.params["w"]), expected_w)


def test_synchronous_save_round_trips(tmp_path):
    with TrainingCheckpointer(CheckpointConfig(tmp_path, save_interval_steps=1, async_save=False)) as checkpointer:
        checkpointer.save(small_state(step=2))
        assert checkpointer.latest_step() == 2
        restored = restore_small(checkpointer)
    np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.arange(12.0).reshape(3, 4) + 2)


def test_restore_from_empty_directory_raises(tmp_path):
    with TrainingCheckpointer(CheckpointConfig(tmp_path)) as checkpointer:
        assert checkpointer.latest_step() is None
        with pytest.raises(FileNotFoundError, match="No checkpoint found"):
            restore_small(checkpointer)


def test_restore_missing_step_raises(tmp_path):
    with TrainingCheckpointer(CheckpointConfig(tmp_path, save_interval_steps=1)) as checkpointer:
        checkpointer.save(small_state(step=2))
        checkpointer.wait_until_finished()
        with pytest.raises(FileNotFoundError, match=r"step 7 .*available steps: \[2\]"):
            restore_small(checkpointer, step=7)


def test_restore_target_without_sharding_raises(tmp_path):
    state = small_state(step=1)
    with TrainingCheckpointer(CheckpointConfig(tmp_path, save_interval_steps=1)) as checkpointer:
        checkpointer.save(state)
        checkpointer.wait_until_finished()
        unsharded = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), state.params)
        with pytest.raises(ValueError, match=r"params_target leaves .*'w'.* have no sharding"):
            checkpointer.restore(unsharded, restore_target(state.opt_state, one_device()))


def test_non_json_data_position_raises(tmp_path):
    state = small_state(step=1)
    state.data_position = {"index": np.arange(3)}
    with TrainingCheckpointer(CheckpointConfig(tmp_path, save_interval_steps=1)) as checkpointer:
        with pytest.raises(ValueError, match="JSON-serialisable"):
            checkpointer.save(state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"save_interval_steps": 0}, "save_interval_steps"), ({"max_to_keep": 0}, "max_to_keep")],
)
def test_checkpoint_config_rejects_invalid_values(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CheckpointConfig(tmp_path, **kwargs)


def test_optimizer_state_target_follows_params():
    params = {"w": jnp.zeros((4, 8)), "b": jnp.zeros(8)}
    optimizer, _ = make_optimizer(OptimizerConfig())
    target = optimizer_state_target(optimizer, restore_target(params, one_device()))

    assert jax.tree.structure(target) == jax.tree.structure(jax.eval_shape(optimizer.init, params))
    assert all(leaf.sharding == one_device() for leaf in jax.tree.leaves(target))
    shapes = sorted(leaf.shape for leaf in jax.tree.leaves(target))
    assert shapes == [(), (), (4, 8), (4, 8), (8,), (8,)]


# ---- Non-finite guard ---------------------------------------------------------------------------------------------


def test_check_finite_passes_finite_values():
    check_finite(3, loss=jnp.float32(0.7), grad_norm=np.float32(12.5), logits=jnp.ones((2, 3)))


def test_check_finite_names_step_and_bad_values():
    with pytest.raises(NonFiniteError, match="step 41") as error:
        check_finite(41, loss=jnp.float32(jnp.nan), grad_norm=jnp.float32(2.0), logps=jnp.array([1.0, -jnp.inf]))

    assert error.value.step == 41
    assert set(error.value.values) == {"loss", "logps"}
    assert "loss=nan" in str(error.value)
    assert "grad_norm" not in str(error.value)


# ---- Optimizer and learning-rate schedule -------------------------------------------------------------------------


def test_warmup_then_cosine_schedule():
    schedule = make_schedule(
        OptimizerConfig(learning_rate=1e-3, total_steps=110, warmup_steps=10, end_learning_rate_ratio=0.1)
    )
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    midpoint = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert float(schedule(60)) == pytest.approx(midpoint)
    assert float(schedule(110)) == pytest.approx(1e-4)
    assert float(schedule(500)) == pytest.approx(1e-4)


def test_warmup_then_linear_schedule():
    schedule = make_schedule(OptimizerConfig(learning_rate=2e-3, total_steps=20, warmup_steps=4, decay="linear"))
    assert float(schedule(2)) == pytest.approx(1e-3)
    assert float(schedule(4)) == pytest.approx(2e-3)
    assert float(schedule(12)) == pytest.approx(1e-3)
    assert float(schedule(20)) == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_after_warmup():
    schedule = make_schedule(OptimizerConfig(learning_rate=3e-4, total_steps=50, warmup_steps=3, decay="constant"))
    assert float(schedule(1)) == pytest.approx(1e-4)
    assert [float(schedule(step)) for step in (3, 20, 49, 80)] == pytest.approx([3e-4] * 4)


@pytest.mark.parametrize(("max_grad_norm", "expected_mu"), [(1.0, [0.6, -0.8, 0.0]), (None, [300.0, -400.0, 0.0])])
def test_optimizer_clips_global_norm(max_grad_norm, expected_mu):
    config = OptimizerConfig(learning_rate=1.0, total_steps=10, b1=0.0, max_grad_norm=max_grad_norm)
    optimizer, _ = make_optimizer(config)
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.array([300.0, -400.0, 0.0])}  # global norm 500
    _, state = optimizer.update(grads, optimizer.init(params), params)

    adam_state = state[1][0] if max_grad_norm is not None else state[0]
    # With b1 = 0, Adam's first moment is the gradient it received after clipping.
    np.testing.assert_allclose(np.asarray(adam_state.mu["w"]), expected_mu, rtol=1e-6)


def test_weight_decay_skips_1d_params():
    config = OptimizerConfig(learning_rate=0.1, total_steps=10, weight_decay=0.5, max_grad_norm=None)
    optimizer, _ = make_optimizer(config)
    params = {"kernel": jnp.full((2, 2), 2.0), "norm_scale": jnp.full((2,), 2.0)}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)

    np.testing.assert_allclose(np.asarray(updates["kernel"]), np.full((2, 2), -0.1 * 0.5 * 2.0), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(updates["norm_scale"]), np.zeros(2))

    decay_all, _ = make_optimizer(dataclasses.replace(config, decay_1d_params=True))
    updates, _ = decay_all.update(zero_grads, decay_all.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["norm_scale"]), np.full(2, -0.1), rtol=1e-6)


def test_optimizer_lowers_quadratic_loss():
    optimizer, schedule = make_optimizer(OptimizerConfig(learning_rate=0.1, total_steps=100, warmup_steps=5))
    params = {"x": jnp.array([3.0, -2.0])}
    state = optimizer.init(params)
    loss_fn = lambda p: jnp.sum(p["x"] ** 2)  # noqa: E731

    @jax.jit
    def train_step(params, state):
        updates, state = optimizer.update(jax.grad(loss_fn)(params), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(100):
        params, state = train_step(params, state)
    assert float(loss_fn(params)) < 1e-2
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"total_steps": 0}, "total_steps"),
        ({"warmup_steps": 20, "total_steps": 10}, "warmup_steps"),
        ({"decay": "exponential"}, "Unknown decay 'exponential'"),
        ({"end_learning_rate_ratio": 1.5}, "end_learning_rate_ratio"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"b2": 1.0}, "b1 and b2"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_optimizer_config_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kwargs)
