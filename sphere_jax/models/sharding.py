"""Place a model's parameters on a device mesh from their logical axis names."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from sphere_jax.training.mesh import DEFAULT_RULES, LogicalRules, logical_to_sharding


def state_shardings(state: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """Return a pytree like `state` (an `nnx.State`) of each parameter's `NamedSharding`."""

    def sharding_of(variable: nnx.Variable) -> Any:
        axes = variable.get_metadata().get("logical_axes")
        value = variable.get_value()
        if axes is None:
            axes = (None,) * value.ndim
        return variable.replace(logical_to_sharding(tuple(axes), value.shape, mesh, rules))

    return jax.tree.map(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """Move every parameter of `state` onto `mesh` with the sharding its logical axes select."""
    shardings = state_shardings(state, mesh, rules)
    return jax.tree.map(
        lambda variable, sharding: variable.replace(jax.device_put(variable.get_value(), sharding.get_value())),
        state,
        shardings,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
