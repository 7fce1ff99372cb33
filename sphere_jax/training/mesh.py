"""Device mesh and the logical-axis rules that map parameter and batch dimensions onto it.

The mesh always has the three axes of `MESH_AXES`:

- `data`: pure data parallelism. Parameters are replicated along it, batches are split along it.
- `fsdp`: fully sharded data parallelism. Batches are split along it and so are parameters (their `embed`
  dimension in `DEFAULT_RULES`), so each device stores a slice of every weight and XLA gathers it when needed.
- `tensor`: tensor (model) parallelism over heads, MLP width and vocabulary.

Model code names each parameter dimension with a logical axis ("embed", "heads", ...). A rules table maps each
logical name to zero or more mesh axes, and `logical_to_sharding` turns the names and the array shape into a
`NamedSharding`. A mesh axis that does not divide a dimension is dropped for that dimension, which then stays
replicated along it; this lets, e.g., a model with 2 KV heads run on a 4-way tensor axis.

With several processes (`jax.distributed`), every process holds the same global batch on the host and
`shard_batch` places on each device the rows that device owns; tests/test_distributed.py checks that two
processes train exactly as one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
# Mesh axes that split the batch dimension, outermost first.
BATCH_AXES = ("data", "fsdp")
LOGICAL_AXES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers", "norm")

LogicalRules = Mapping[str, str | tuple[str, ...] | None]
LogicalAxes = tuple[str | None, ...]

DEFAULT_RULES: LogicalRules = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    # Stacked (scanned) layers stay whole on every device; pipeline parallelism is not supported.
    "layers": None,
    "norm": None,
    # Activations.
    "batch": BATCH_AXES,
    "length": None,
}


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build a mesh with axes ("data", "fsdp", "tensor") over the given devices.

    Args:
        shape: Size of each mesh axis. Missing axes have size 1 and one axis may be -1, meaning "all remaining
            devices". `None` puts every device on `fsdp`.
        devices: Devices to lay out; defaults to `jax.devices()`.

    Returns:
        A mesh whose axes are all `AxisType.Auto`, so XLA propagates shardings through `jit`.

    Raises:
        ValueError: If an axis name is unknown, a size is not a positive integer or -1, or the sizes do not
            multiply to the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    device_count = len(devices)
    if device_count == 0:
        raise ValueError("make_mesh got an empty device list.")
    if shape is None:
        axis_sizes = {"data": 1, "fsdp": device_count, "tensor": 1}
    else:
        axis_sizes = _resolve_axis_sizes(dict(shape), device_count)

    mesh = jax.make_mesh(
        tuple(axis_sizes[name] for name in MESH_AXES),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )
    logger.info("Built mesh %s over %d %s devices", dict(mesh.shape), device_count, devices[0].platform)
    return mesh


def _resolve_axis_sizes(shape: dict[str, int], device_count: int) -> dict[str, int]:
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"Unknown mesh axes {unknown} in mesh shape {shape}; the axes are {MESH_AXES}.")
    for name, size in shape.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or (size < 1 and size != -1):
            raise ValueError(
                f"Mesh axis {name!r} has size {size!r} in mesh shape {shape}; use a positive integer or -1."
            )
    sizes = {name: int(shape.get(name, 1)) for name in MESH_AXES}
    free_axes = [name for name, size in sizes.items() if size == -1]
    if len(free_axes) > 1:
        raise ValueError(f"Mesh shape {shape} has -1 on {free_axes}; at most one axis may be -1.")

    fixed_product = math.prod(size for size in sizes.values() if size != -1)
    if free_axes:
        if device_count % fixed_product != 0:
            raise ValueError(
                f"Mesh shape {shape} does not fit {device_count} devices: {device_count} is not a multiple of "
                f"{fixed_product}, the product of the fixed axes, so -1 on {free_axes[0]!r} has no integer size."
            )
        sizes[free_axes[0]] = device_count // fixed_product
    elif fixed_product != device_count:
        raise ValueError(
            f"Mesh shape {shape} needs {fixed_product} devices but {device_count} are available; make the axis "
            "sizes multiply to the device count, use -1 for one axis, or pass the devices to use."
        )
    return sizes


def logical_to_partition_spec(
    logical_axes: LogicalAxes, shape: Sequence[int], mesh: Mesh | AbstractMesh, rules: LogicalRules = DEFAULT_RULES
) -> PartitionSpec:
    """Map the logical axis names of an array to a PartitionSpec on `mesh`.

    Each logical name selects mesh axes from `rules`. A mesh axis is kept for a dimension only if the dimension
    stays divisible after splitting by it and by the axes already kept, and if no earlier dimension uses it (a
    PartitionSpec may name each mesh axis once). Axes of size 1 are left out because they split nothing.

    Args:
        logical_axes: One logical name, or None for "replicated", per array dimension.
        shape: The array shape.
        mesh: The device mesh; only its axis sizes are read, so an `AbstractMesh` works too.
        rules: Logical name to mesh axis (or tuple of mesh axes, or None) table.

    Raises:
        ValueError: If the lengths differ, a logical name has no rule, or a rule names an axis the mesh lacks.
    """
    logical_axes = tuple(logical_axes)
    shape = tuple(int(dim) for dim in shape)
    if len(logical_axes) != len(shape):
        raise ValueError(
            f"Logical axes {logical_axes} have {len(logical_axes)} entries but the array shape {shape} has "
            f"{len(shape)} dimensions; give one logical name (or None) per dimension."
        )
    used_mesh_axes: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for logical_name, dim in zip(logical_axes, shape, strict=True):
        mesh_axes = _rule_for(logical_name, rules, mesh)
        kept: list[str] = []
        split = 1
        for mesh_axis in mesh_axes:
            axis_size = mesh.shape[mesh_axis]
            if axis_size == 1 or mesh_axis in used_mesh_axes:
                continue
            if dim % (split * axis_size) != 0:
                logger.debug(
                    "Not sharding logical axis %r (size %d) over mesh axis %r (size %d): it does not divide",
                    logical_name, dim, mesh_axis, axis_size,
                )
                continue
            kept.append(mesh_axis)
            split *= axis_size
        used_mesh_axes.update(kept)
        if not kept:
            spec.append(None)
        elif len(kept) == 1:
            spec.append(kept[0])
        else:
            spec.append(tuple(kept))
    return PartitionSpec(*spec)


def logical_to_sharding(
    logical_axes: LogicalAxes, shape: Sequence[int], mesh: Mesh, rules: LogicalRules = DEFAULT_RULES
) -> NamedSharding:
    """Return the `NamedSharding` of an array from the logical names of its dimensions.

    See `logical_to_partition_spec` for how names map to mesh axes and when an axis is dropped.
    """
    return NamedSharding(mesh, logical_to_partition_spec(logical_axes, shape, mesh, rules))


def tree_shardings(
    tree: Any, logical_axes_tree: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES
) -> Any:
    """Map every array of `tree` to its `NamedSharding`.

    Args:
        tree: Pytree of arrays or `jax.ShapeDtypeStruct`s (anything with `.shape`).
        logical_axes_tree: Pytree of the same structure whose leaves are tuples of logical names. A leaf of
            `None` (or `()` for a scalar) means fully replicated.
        mesh: The device mesh.
        rules: Logical name to mesh axes table.

    Returns:
        A pytree with the structure of `tree` holding `NamedSharding`s.
    """

    def sharding_of(logical_axes: LogicalAxes | None, leaf: Any) -> NamedSharding:
        if logical_axes is None:
            return NamedSharding(mesh, PartitionSpec())
        return logical_to_sharding(logical_axes, leaf.shape, mesh, rules)

    return jax.tree.map(sharding_of, logical_axes_tree, tree, is_leaf=_is_logical_axes_leaf)


def shard_pytree(tree: Any, logical_axes_tree: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """Place every array of `tree` on `mesh` with the sharding its logical axes select.

    Args:
        tree: Pytree of arrays.
        logical_axes_tree: Same structure as `tree`, with tuples of logical names (or `None`) as leaves.
        mesh: The device mesh.
        rules: Logical name to mesh axes table.

    Returns:
        The pytree of sharded `jax.Array`s.
    """
    return jax.device_put(tree, tree_shardings(tree, logical_axes_tree, mesh, rules))


def put_global(tree: Any, shardings: Any) -> Any:
    """Copy `tree` onto `shardings` (a matching pytree), also when they span other processes' devices.

    With several processes every process passes the same values and places the shards its devices own.
    The result never aliases the input, so a caller may donate it.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings, may_alias=False)

    def place(value: Any, sharding: NamedSharding) -> jax.Array:
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree, shardings)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Return the sharding that splits dimension 0 over ("data", "fsdp") and replicates the other dimensions."""
    if ndim < 1:
        raise ValueError(f"A batch array needs at least 1 dimension, got ndim={ndim}.")
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Split the leading (batch) dimension of every array in `batch` over the ("data", "fsdp") mesh axes.

    Every process passes the same global batch (all processes read the same pairs in the same order); each
    device receives its own rows, so this works for one process and for several alike.

    Raises:
        ValueError: If an array's batch size is not a multiple of the number of devices along ("data", "fsdp").
            Pad the batch with zero-weight rows (see `losses.dpo_loss`'s `pair_weights`) or change the batch size.
    """
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]

    def place(path: tuple[Any, ...], array: Any) -> jax.Array:
        array = np.asarray(array)
        if array.ndim == 0 or array.shape[0] % batch_devices != 0:
            raise ValueError(
                f"Batch entry {jax.tree_util.keystr(path)} has shape {array.shape}, but its leading dimension must "
                f"be a multiple of {batch_devices} (mesh axes data x fsdp = {batch_devices}). Pad the batch "
                "with zero-weight rows or change the batch size."
            )
        return jax.make_array_from_callback(array.shape, batch_sharding(mesh, array.ndim), lambda index: array[index])

    return jax.tree_util.tree_map_with_path(place, batch)


def _rule_for(logical_name: str | None, rules: LogicalRules, mesh: Mesh | AbstractMesh) -> tuple[str, ...]:
    if logical_name is None:
        return ()
    if logical_name not in rules:
        raise ValueError(
            f"Logical axis {logical_name!r} has no rule; known logical axes are {sorted(rules)}. "
            "Add it to the rules table (map it to None to replicate)."
        )
    target = rules[logical_name]
    mesh_axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    missing = [axis for axis in mesh_axes if axis not in mesh.shape]
    if missing:
        raise ValueError(
            f"Rule {logical_name!r} -> {target!r} names mesh axes {missing} that the mesh "
            f"{dict(mesh.shape)} lacks."
        )
    return mesh_axes


def _is_logical_axes_leaf(node: Any) -> bool:
    return node is None or (isinstance(node, tuple) and all(isinstance(x, str | None) for x in node))
