"""The Flax NNX decoder for the Llama and Qwen2 families.

Layer parameters are stacked on a leading `layers` axis and the forward runs the layers with
`jax.lax.scan`, so compile time does not grow with depth. Every parameter carries logical axis
names in its `logical_axes` metadata; `sphere_jax.training.mesh` maps them onto a device mesh.

One forward serves training and sampling: tokens, positions and a key-validity mask in, and an
optional dense KV cache that the call writes at `cache_offset`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sphere_jax.models import layers
from sphere_jax.models.config import ModelConfig


class KVCache(NamedTuple):
    """Dense keys and values for every layer, written in place at one slot offset for all rows."""

    k: jax.Array  # [layers, batch, cache_length, kv_heads, head_dim]
    v: jax.Array  # [layers, batch, cache_length, kv_heads, head_dim]

    @property
    def length(self) -> int:
        return self.k.shape[2]


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> KVCache:
    """Allocate a zeroed cache for `batch` rows of `length` slots."""
    dtype = dtype or cfg.compute_jnp_dtype
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype: Any, scale=0.02):
    value = scale * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=axes)


def _ones(shape: tuple[int, ...], axes: tuple[str | None, ...], dtype: Any):
    return nnx.Param(jnp.ones(shape, dtype), logical_axes=axes)


def _zeros(shape: tuple[int, ...], axes: tuple[str | None, ...], dtype: Any):
    return nnx.Param(jnp.zeros(shape, dtype), logical_axes=axes)


class DecoderLayers(nnx.Module):
    """All decoder blocks' weights, stacked on a leading layers axis."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        n, e, f = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
        h, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt = cfg.param_jnp_dtype
        self.attn_norm = _ones((n, e), ("layers", "norm"), dt)
        self.q = _param(rngs, (n, e, h, d), ("layers", "embed", "heads", "head_dim"), dt)
        self.k = _param(rngs, (n, e, k, d), ("layers", "embed", "kv_heads", "head_dim"), dt)
        self.v = _param(rngs, (n, e, k, d), ("layers", "embed", "kv_heads", "head_dim"), dt)
        self.o = _param(rngs, (n, h, d, e), ("layers", "heads", "head_dim", "embed"), dt)
        if cfg.attention_bias:
            self.q_bias = _zeros((n, h, d), ("layers", "heads", "head_dim"), dt)
            self.k_bias = _zeros((n, k, d), ("layers", "kv_heads", "head_dim"), dt)
            self.v_bias = _zeros((n, k, d), ("layers", "kv_heads", "head_dim"), dt)
        self.mlp_norm = _ones((n, e), ("layers", "norm"), dt)
        self.gate = _param(rngs, (n, e, f), ("layers", "embed", "mlp"), dt)
        self.up = _param(rngs, (n, e, f), ("layers", "embed", "mlp"), dt)
        self.down = _param(rngs, (n, f, e), ("layers", "mlp", "embed"), dt)

    def arrays(self) -> dict[str, jax.Array]:
        return {name: value for name, value in nnx.to_pure_dict(nnx.state(self)).items()}


class Transformer(nnx.Module):
    """Decoder-only transformer: embedding, stacked blocks, final RMSNorm, optional LM head.

    A reward-model config (`cfg.num_labels > 0`) builds the backbone alone, with no LM head.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = cfg.param_jnp_dtype
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dt)
        self.layers = DecoderLayers(cfg, rngs=rngs)
        self.final_norm = _ones((cfg.hidden_size,), ("norm",), dt)
        if not cfg.tie_word_embeddings and not cfg.is_reward_model:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dt)

    def output_embedding(self) -> jax.Array:
        """Return the LM head kernel [embed, vocab] in the compute dtype."""
        dtype = self.cfg.compute_jnp_dtype
        if self.cfg.tie_word_embeddings:
            return self.embed.get_value().astype(dtype).T
        return self.lm_head.get_value().astype(dtype)

    def hidden_states(
        self,
        tokens: jax.Array,  # [B, T] int32
        positions: jax.Array,  # [B, T] int32
        kv_valid: jax.Array,  # [B, S] bool: S = T without a cache, the cache length with one
        cache: KVCache | None = None,
        cache_offset: jax.Array | int = 0,
        *,
        remat: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """Run the blocks and the final norm; return hidden states [B, T, E] and the updated cache."""
        cfg = self.cfg
        dtype = cfg.compute_jnp_dtype
        x = jnp.take(self.embed.get_value(), tokens, axis=0).astype(dtype)  # [B, T, E]
        cos, sin = layers.rope_tables(positions, layers.rope_inverse_frequencies(cfg))
        mask = layers.attention_mask(kv_valid, tokens.shape[1], cache_offset)
        stacked = self.layers.arrays()

        def block(x, p, cache_k, cache_v):
            p = jax.tree.map(lambda a: a.astype(dtype), p)
            h = layers.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
            q = jnp.einsum("bte,ehd->bthd", h, p["q"])
            k = jnp.einsum("bte,ekd->btkd", h, p["k"])
            v = jnp.einsum("bte,ekd->btkd", h, p["v"])
            if cfg.attention_bias:
                q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
            q = layers.apply_rope(q, cos, sin)
            k = layers.apply_rope(k, cos, sin)
            if cache_k is not None:
                start = (0, cache_offset, 0, 0)
                cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
                cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
                k, v = cache_k.astype(dtype), cache_v.astype(dtype)
            attended = layers.grouped_query_attention(q, k, v, mask)
            x = x + jnp.einsum("bthd,hde->bte", attended, p["o"])
            h = layers.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
            x = x + layers.swiglu(h, p["gate"], p["up"], p["down"])
            return x, cache_k, cache_v

        if remat:
            block = jax.checkpoint(block)

        if cache is None:

            def step(x, p):
                x, _, _ = block(x, p, None, None)
                return x, None

            x, _ = jax.lax.scan(step, x, stacked)
            new_cache = None
        else:
            # The cache rides in the carry and each layer updates its slice in place; passing it
            # as scan inputs and outputs would copy the whole cache once per call.
            def step_cached(carry, inputs):
                x, all_k, all_v = carry
                p, index = inputs
                layer_k = jax.lax.dynamic_index_in_dim(all_k, index, keepdims=False)
                layer_v = jax.lax.dynamic_index_in_dim(all_v, index, keepdims=False)
                x, layer_k, layer_v = block(x, p, layer_k, layer_v)
                all_k = jax.lax.dynamic_update_index_in_dim(all_k, layer_k, index, 0)
                all_v = jax.lax.dynamic_update_index_in_dim(all_v, layer_v, index, 0)
                return (x, all_k, all_v), None

            indices = jnp.arange(cfg.num_layers)
            (x, all_k, all_v), _ = jax.lax.scan(step_cached, (x, cache.k, cache.v), (stacked, indices))
            new_cache = KVCache(all_k, all_v)

        x = layers.rms_norm(x, self.final_norm.get_value().astype(dtype), cfg.rms_norm_eps)
        return x, new_cache

    def __call__(
        self,
        tokens: jax.Array,  # [B, T] int32
        positions: jax.Array,  # [B, T] int32
        kv_valid: jax.Array,  # [B, S] bool
        cache: KVCache | None = None,
        cache_offset: jax.Array | int = 0,
    ) -> tuple[jax.Array, KVCache | None]:
        """Return logits [B, T, vocab] in fp32 and the updated cache."""
        hidden, cache = self.hidden_states(tokens, positions, kv_valid, cache, cache_offset)
        logits = jnp.einsum("bte,ev->btv", hidden, self.output_embedding(), preferred_element_type=jnp.float32)
        return logits, cache


def logical_axes(model: nnx.Module) -> Any:
    """Return a pytree, shaped like `nnx.state(model)`, of each parameter's logical axis names."""
    state = nnx.state(model, nnx.Param)
    return jax.tree.map(
        lambda variable: variable.get_metadata()["logical_axes"],
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def abstract_model(cfg: ModelConfig, model_class: type[nnx.Module] | None = None) -> nnx.Module:
    """Build the model's structure with shapes and dtypes only, allocating no weights."""
    model_class = model_class or Transformer
    return nnx.eval_shape(lambda: model_class(cfg, rngs=nnx.Rngs(0)))


def positions_from_mask(valid: jax.Array) -> jax.Array:
    """Position ids [B, T] that count only valid tokens, so left padding does not shift RoPE."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)
