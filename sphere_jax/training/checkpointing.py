"""Orbax checkpoints of the training state, and a guard that stops training on a non-finite loss.

A checkpoint contains four Orbax items in one step directory:

- `params` and `opt_state`: pytrees of arrays, written with `StandardSave`.
- `rng`: the raw bits of the PRNG key (`jax.random.key_data`), so both typed keys and legacy uint32 keys survive.
- `metadata`: JSON with the step, the data position, the PRNG implementation and any caller metadata.

Restoring reads each array straight into a target sharding given by the caller, so a checkpoint written on one
mesh (e.g. 8 devices as (2, 4)) restores on another (e.g. 1 device), and the reverse.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

logger = logging.getLogger(__name__)

# Bumped when the item layout below changes, so that old checkpoints fail with a clear error.
CHECKPOINT_FORMAT_VERSION = 1
JsonValue = None | bool | int | float | str | list[Any] | dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Location, frequency and retention of checkpoints.

    Attributes:
        directory: Root directory; each saved step gets a subdirectory named after the step.
        save_interval_steps: Save only steps that are multiples of this, unless `save(..., force=True)` or the
            JAX distributed runtime reports a preemption.
        max_to_keep: Keep at most this many checkpoints, deleting the oldest; `None` keeps all.
        async_save: Write in a background thread. `save` still copies the arrays before it returns, so the
            caller may update, delete or donate them right after (a test checks this on CPU).
    """

    directory: str | os.PathLike[str]
    save_interval_steps: int = 500
    max_to_keep: int | None = 3
    async_save: bool = True

    def __post_init__(self) -> None:
        if self.save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {self.save_interval_steps}.")
        if self.max_to_keep is not None and self.max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {self.max_to_keep}.")


@dataclasses.dataclass
class TrainingCheckpoint:
    """The state saved at one step.

    Attributes:
        step: Optimizer steps taken so far.
        params: Pytree of model parameter arrays.
        opt_state: Optimizer state pytree (e.g. from `optax.GradientTransformation.init`).
        rng_key: PRNG key, typed (`jax.random.key`) or a legacy uint32 key (`jax.random.PRNGKey`).
        data_position: Where the data stream resumes, as any JSON value (e.g. `{"epoch": 1, "index": 4096}`).
        metadata: Extra JSON-serialisable facts to keep with the checkpoint (e.g. the SPHERE iteration).
    """

    step: int
    params: Any
    opt_state: Any
    rng_key: jax.Array
    data_position: JsonValue
    metadata: dict[str, JsonValue] = dataclasses.field(default_factory=dict)


class NonFiniteError(FloatingPointError):
    """Raised when a training quantity such as the loss or gradient norm is NaN or infinite.

    Attributes:
        step: The training step at which the values were found.
        values: The non-finite values by name, as host numbers or arrays.
    """

    def __init__(self, step: int, values: Mapping[str, Any]) -> None:
        self.step = step
        self.values = dict(values)
        described = ", ".join(f"{name}={value}" for name, value in self.values.items())
        super().__init__(
            f"Non-finite values at step {step}: {described}. Lower the learning rate, check the batch at this "
            "step, or restore the last checkpoint."
        )


def check_finite(step: int, **values: Any) -> None:
    """Raise `NonFiniteError` naming `step` if any of the named values has a NaN or infinite entry.

    This copies the values to the host, which waits for the device computation that produces them.

    Args:
        step: The current training step, for the error message.
        **values: Scalars or arrays by name, e.g. `loss=loss, grad_norm=grad_norm`.

    Raises:
        NonFiniteError: Naming the step and every non-finite value.
    """
    host_values = jax.device_get(values)
    bad = {name: value for name, value in host_values.items() if not np.all(np.isfinite(value))}
    if bad:
        raise NonFiniteError(step, bad)


def restore_target(abstract_tree: Any, shardings: Any = None) -> Any:
    """Pair every leaf's shape and dtype with a target sharding, giving what `TrainingCheckpointer.restore` reads into.

    Args:
        abstract_tree: Pytree of arrays or `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape(init_fn)`.
        shardings: Pytree of the same structure holding a `jax.sharding.Sharding` per leaf (see
            `mesh.tree_shardings`), or one sharding for every leaf, or `None` to keep each leaf's own `.sharding`
            (for a tree of arrays already laid out as wanted, e.g. `jax.jit(optimizer.init)(params)`).

    Returns:
        A pytree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`.
    """
    if shardings is None:
        shardings = jax.tree.map(lambda leaf: leaf.sharding, abstract_tree)
    elif isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, abstract_tree)
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), abstract_tree, shardings
    )


def optimizer_state_target(optimizer: optax.GradientTransformation, params_target: Any) -> Any:
    """Return the abstract optimizer state for `params_target`, with a sharding on every leaf.

    Optimizer-state subtrees that mirror the parameters (Adam's `mu` and `nu`) take the parameters' shardings;
    every other leaf (step counts) is replicated on the parameters' mesh. The result serves as the restore target
    of the optimizer state and as the `out_shardings` of a jitted `optimizer.init`.

    Args:
        optimizer: The optimizer whose state is wanted.
        params_target: Pytree of `jax.ShapeDtypeStruct` (or arrays) with shardings, as for `restore`.
    """
    _require_shardings(params_target, "params_target")
    abstract_state = jax.eval_shape(optimizer.init, params_target)
    params_treedef = jax.tree.structure(params_target)
    params_leaves = jax.tree.leaves(params_target)
    replicated = _replicated_like(params_leaves)

    def mirrors_params(node: Any) -> bool:
        if jax.tree.structure(node) != params_treedef:
            return False
        return all(a.shape == p.shape for a, p in zip(jax.tree.leaves(node), params_leaves, strict=True))

    def with_sharding(node: Any) -> Any:
        if mirrors_params(node):
            return jax.tree.map(
                lambda leaf, param: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=param.sharding),
                node,
                params_target,
            )
        return jax.ShapeDtypeStruct(node.shape, node.dtype, sharding=replicated)

    return jax.tree.map(with_sharding, abstract_state, is_leaf=mirrors_params)


class TrainingCheckpointer:
    """Save and restore `TrainingCheckpoint`s with an `orbax.checkpoint.CheckpointManager`.

    Use as a context manager, or call `close()` when done; `close()` waits for pending asynchronous saves.
    """

    def __init__(self, config: CheckpointConfig) -> None:
        self.config = config
        self.directory = Path(config.directory).expanduser().resolve()
        policies = ocp.checkpoint_managers
        # Orbax's default policy also saves the first step of a fresh run. Here only the interval and a
        # preemption reported by JAX's distributed runtime (e.g. on TPU VMs) trigger a save.
        save_policy = policies.AnySavePolicy(
            [policies.FixedIntervalPolicy(config.save_interval_steps), policies.PreemptionCheckpointingPolicy()]
        )
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=config.save_interval_steps,
            max_to_keep=config.max_to_keep,
            enable_async_checkpointing=config.async_save,
            save_decision_policy=save_policy,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, checkpoint: TrainingCheckpoint, force: bool = False) -> bool:
        """Start saving `checkpoint` if its step is due, or always when `force` is True.

        Returns:
            True if a save was started; with `async_save` it may still be writing (see `wait_until_finished`).

        Raises:
            ValueError: If the data position or metadata are not JSON-serialisable, or the step is negative.
        """
        if checkpoint.step < 0:
            raise ValueError(f"Checkpoint step must be >= 0, got {checkpoint.step}.")
        rng_key = checkpoint.rng_key
        is_typed_key = jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key)
        key_data = jax.random.key_data(rng_key) if is_typed_key else rng_key
        metadata = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "step": int(checkpoint.step),
            "data_position": checkpoint.data_position,
            "rng_impl": str(jax.random.key_impl(rng_key)) if is_typed_key else None,
            "rng_key_data_shape": list(key_data.shape),
            "rng_key_data_dtype": str(key_data.dtype),
            "user": checkpoint.metadata,
        }
        try:
            json.dumps(metadata)
        except TypeError as error:
            raise ValueError(
                f"data_position and metadata must be JSON-serialisable to be checkpointed: {error}"
            ) from error

        args = ocp.args.Composite(
            params=ocp.args.StandardSave(checkpoint.params),
            opt_state=ocp.args.StandardSave(checkpoint.opt_state),
            rng=ocp.args.StandardSave({"key_data": key_data}),
            metadata=ocp.args.JsonSave(metadata),
        )
        started = self._manager.save(checkpoint.step, args=args, force=force)
        if started:
            logger.info("Started saving checkpoint at step %d to %s", checkpoint.step, self.directory)
        return started

    def restore(
        self,
        params_target: Any,
        opt_state_target: Any,
        step: int | None = None,
        rng_key_sharding: jax.sharding.Sharding | None = None,
    ) -> TrainingCheckpoint:
        """Read a checkpoint into the given shapes, dtypes and shardings.

        Args:
            params_target: Pytree of `jax.ShapeDtypeStruct` with `sharding` set (see `restore_target`), with the
                structure of the saved params.
            opt_state_target: Same for the optimizer state.
            step: Step to restore; `None` restores the latest.
            rng_key_sharding: Sharding of the restored PRNG key. The default replicates it on the mesh of the
                first parameter, so that the key can enter the same `jit` call as the parameters.

        Returns:
            The restored checkpoint, its arrays laid out as the targets ask.

        Raises:
            FileNotFoundError: If there is no checkpoint, or none at `step`.
            ValueError: If a target leaf has no sharding, or the checkpoint format is not this module's.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"No checkpoint found in {self.directory}.")
        elif step not in self.all_steps():
            raise FileNotFoundError(
                f"No checkpoint for step {step} in {self.directory}; available steps: {self.all_steps()}."
            )
        _require_shardings(params_target, "params_target")
        _require_shardings(opt_state_target, "opt_state_target")

        metadata = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]
        if metadata.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"Checkpoint at step {step} in {self.directory} has format version "
                f"{metadata.get('format_version')}, but this code reads version {CHECKPOINT_FORMAT_VERSION}."
            )
        if rng_key_sharding is None:
            rng_key_sharding = _replicated_like(jax.tree.leaves(params_target))
        key_data_target = jax.ShapeDtypeStruct(
            tuple(metadata["rng_key_data_shape"]), np.dtype(metadata["rng_key_data_dtype"]), sharding=rng_key_sharding
        )

        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(params_target),
                opt_state=ocp.args.StandardRestore(opt_state_target),
                rng=ocp.args.StandardRestore({"key_data": key_data_target}),
            ),
        )
        key_data = restored["rng"]["key_data"]
        rng_impl = metadata["rng_impl"]
        rng_key = key_data if rng_impl is None else jax.random.wrap_key_data(key_data, impl=rng_impl)
        logger.info("Restored checkpoint at step %d from %s", step, self.directory)
        return TrainingCheckpoint(
            step=int(metadata["step"]),
            params=restored["params"],
            opt_state=restored["opt_state"],
            rng_key=rng_key,
            data_position=metadata["data_position"],
            metadata=metadata["user"],
        )

    def latest_step(self) -> int | None:
        """Return the newest saved step, or None when the directory contains no checkpoint."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Return every kept step, oldest first."""
        return sorted(self._manager.all_steps())

    def wait_until_finished(self) -> None:
        """Block until every asynchronous save has been written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the manager's threads."""
        self._manager.close()

    def __enter__(self) -> TrainingCheckpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _require_shardings(target: Any, name: str) -> None:
    leaves = jax.tree_util.tree_leaves_with_path(target)
    missing = [jax.tree_util.keystr(path) for path, leaf in leaves if getattr(leaf, "sharding", None) is None]
    if missing:
        raise ValueError(
            f"{name} leaves {missing[:5]} have no sharding; build the target with restore_target(abstract, "
            "shardings) so each array is read straight onto its devices."
        )


def _replicated_like(leaves: list[Any]) -> jax.sharding.Sharding:
    sharding = leaves[0].sharding if leaves else None
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec())
    if isinstance(sharding, SingleDeviceSharding):
        return sharding
    return SingleDeviceSharding(jax.devices()[0])
