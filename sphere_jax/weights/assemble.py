"""Assemble a model from a stream of HF-named tensors, holding at most one copy of the weights.

Tensors arrive one at a time (from safetensors or GGUF). Each is checked, converted to our layout
and parameter dtype, and written into a preallocated host buffer per parameter. When every
tensor has arrived, the buffers move to the device one parameter at a time and are freed.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sphere_jax.models.config import ModelConfig
from sphere_jax.models.prm import ProcessRewardModel
from sphere_jax.models.transformer import Transformer, abstract_model
from sphere_jax.weights.mapping import WeightError, hf_target, param_layout


def model_class(cfg: ModelConfig) -> type[nnx.Module]:
    return ProcessRewardModel if cfg.is_reward_model else Transformer


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype, alignment: int = 64) -> np.ndarray:
    """Allocate an uninitialised array whose data starts on an `alignment`-byte boundary.

    JAX's CPU backend (0.10.2) aliases a 64-byte-aligned host buffer in `device_put` and copies
    a less aligned one, which would hold two copies of that parameter at once.
    """
    count = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(count + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset : offset + count].view(dtype).reshape(shape)


class WeightAssembler:
    """Collect HF tensors into our parameter buffers and build the NNX model at the end."""

    def __init__(self, cfg: ModelConfig, source: str):
        self.cfg = cfg
        self.source = source
        self._dtype = np.dtype(jnp.dtype(cfg.param_jnp_dtype))
        self._layout = param_layout(cfg)
        self._buffers: dict[tuple[str, ...], np.ndarray | None] = {path: None for path in self._layout}
        self._filled: dict[tuple[str, ...], set[int | None]] = {path: set() for path in self._layout}

    def add(self, name: str, tensor: np.ndarray) -> None:
        """Place one HF tensor; raise WeightError naming the source, key and expected shape."""
        target = hf_target(self.cfg, name)
        if target is None:
            return
        if tuple(tensor.shape) != target.hf_shape:
            raise WeightError(
                f"{self.source}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"expected {target.hf_shape} for this config"
            )
        if self._buffers[target.path] is None:
            self._buffers[target.path] = _aligned_empty(self._layout[target.path][0], self._dtype)
        converted = target.to_ours(np.asarray(tensor)).astype(self._dtype, copy=False)
        if target.layer is None:
            self._buffers[target.path][...] = converted
        else:
            self._buffers[target.path][target.layer] = converted
        self._filled[target.path].add(target.layer)

    def add_all(self, tensors: Iterable[tuple[str, np.ndarray]]) -> None:
        for name, tensor in tensors:
            self.add(name, tensor)

    def missing(self) -> list[str]:
        """Name the parameters (and layers) that no tensor has filled yet."""
        missing = []
        for path, (_, stacked) in self._layout.items():
            expected = set(range(self.cfg.num_layers)) if stacked else {None}
            absent = expected - self._filled[path]
            if absent:
                where = "" if absent == {None} else f" layers {sorted(absent)[:5]}"
                missing.append(".".join(path) + where)
        return missing

    def build(self) -> nnx.Module:
        """Return the model with the collected weights on the default device."""
        missing = self.missing()
        if missing:
            raise WeightError(f"{self.source}: no tensor for parameters {missing[:8]}")
        abstract = abstract_model(self.cfg, model_class(self.cfg))
        graphdef, state = nnx.split(abstract)
        pure = {}
        for path in list(self._buffers):
            # Wait for each copy, so no host buffer outlives its transfer and the peak stays near
            # one copy of the weights.
            array = jax.device_put(self._buffers.pop(path)).block_until_ready()
            node = pure
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = array
        nnx.replace_by_pure_dict(state, pure)
        return nnx.merge(graphdef, state)
