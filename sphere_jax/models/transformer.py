"""The Flax NNX decoder for the Llama and Qwen2 families.

Layer parameters are stacked on a leading `layers` axis and the forward runs the layers with
`jax.lax.scan`, so compile time does not grow with depth. Every parameter carries logical axis
names in its `logical_axes` metadata; `sphere_jax.training.mesh` maps them onto a device mesh.

One forward serves training and sampling: tokens, positions and a key-validity mask in, and an
optional dense KV cache that the call writes at `cache_offset`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sphere_jax.models import layers
from sphere_jax.models.config import ModelConfig


class KVCache(NamedTuple):
    """Dense keys and values, one buffer per layer, written in place at one slot offset for all rows.

    Separate buffers let every decode step update each layer's slot in place. One stacked buffer,
    updated inside a layer loop, is copied whole on CPU. fp32 keys are stored slots-last
    (`layers.keys_slots_last`).
    """

    k: tuple[jax.Array, ...]  # layers x [batch, kv_heads, cache_length, head_dim], fp32 keys [.., head_dim, cache_length]
    v: tuple[jax.Array, ...]  # layers x [batch, kv_heads, cache_length, head_dim]

    @property
    def length(self) -> int:
        return self.v[0].shape[2]

    def write(self, part: KVCache, rows: jax.Array, offset: int) -> KVCache:
        """Return this cache with `part` written at rows `rows` [R] and slots [offset, offset + part.length).

        Rows whose index is out of range are dropped (the padding rows of a prefill tier).
        """
        slots = slice(offset, offset + part.length)

        def put_k(full, new):
            if layers.keys_slots_last(full.dtype):
                return full.at[rows, :, :, slots].set(new, mode="drop")
            return full.at[rows, :, slots].set(new, mode="drop")

        def put_v(full, new):
            return full.at[rows, :, slots].set(new, mode="drop")

        return KVCache(tuple(map(put_k, self.k, part.k)), tuple(map(put_v, self.v, part.v)))

    def take_rows(self, rows: jax.Array) -> KVCache:
        """Return the cache of rows `rows` [B'] (prefix fan-out copies one prompt into n rows)."""
        return KVCache(
            tuple(jnp.take(k, rows, axis=0) for k in self.k),
            tuple(jnp.take(v, rows, axis=0) for v in self.v),
        )


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> KVCache:
    """Allocate a zeroed cache for `batch` rows of `length` slots."""
    dtype = dtype or cfg.compute_jnp_dtype
    shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, length) if layers.keys_slots_last(dtype) else shape
    layers_k = tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers))
    layers_v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(layers_k, layers_v)


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
        """Run the blocks and the final norm; return hidden states [B, T, E] and the updated cache.

        Without a cache the layers run in a `lax.scan` over the stacked weights (training). With
        one, this is `cached_hidden_states` on static slices of them, which XLA copies per call. A
        sampler that decodes many steps keeps `decode_weights()` instead.
        """
        if cache is not None:
            return cached_hidden_states(self.cfg, self.decode_weights(copy=False), tokens, positions, kv_valid, cache, cache_offset)
        cfg = self.cfg
        dtype = cfg.compute_jnp_dtype
        x = jnp.take(self.embed.get_value(), tokens, axis=0).astype(dtype)  # [B, T, E]
        cos, sin = layers.rope_tables(positions, layers.rope_inverse_frequencies(cfg))
        mask = layers.attention_mask(kv_valid, tokens.shape[1], cache_offset)

        def step(x, p):
            x, _, _ = _block(cfg, x, p, cos, sin, mask)
            return x, None

        if remat:
            step = jax.checkpoint(step)
        x, _ = jax.lax.scan(step, x, self.layers.arrays())
        x = layers.rms_norm(x, self.final_norm.get_value().astype(dtype), cfg.rms_norm_eps)
        return x, None

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

    def decode_weights(self, *, copy: bool = True, matmul_dtype: Any = None) -> DecodeWeights:
        """Return the weights in the layout that decoding reads fastest: one array per layer.

        With `copy` (the default, for a sampler) each layer's weights become their own buffers,
        made once here, at the cost of one more copy of the block weights in memory. Without it
        the layers are static slices of the stacked arrays, which XLA copies on every call.
        `matmul_dtype` (with `copy`) stores the copy's matrices (projections, embedding, LM
        head) in that dtype; pass the same dtype to `cached_hidden_states` and `decode_logits`.
        """
        stacked = self.layers.arrays()
        embed = self.embed.get_value()
        head = None if self.cfg.tie_word_embeddings or self.cfg.is_reward_model else self.lm_head.get_value()
        norm = self.final_norm.get_value()
        if not copy:
            if matmul_dtype is not None:
                raise ValueError("decode_weights(copy=False) keeps the stored dtype; matmul_dtype needs copy=True")
            blocks = tuple({name: value[i] for name, value in stacked.items()} for i in range(self.cfg.num_layers))
            return DecodeWeights(embed, blocks, norm, head)
        if matmul_dtype is not None:
            stacked, embed, head = _cast_matrices((stacked, embed, head), jnp.dtype(matmul_dtype))
        return DecodeWeights(embed, _unstack(stacked, self.cfg.num_layers), norm, head)


class DecodeWeights(NamedTuple):
    """A decoder's weights for cached decoding, with the block weights as one dict per layer."""

    embed: jax.Array  # [vocab, embed]
    blocks: tuple[dict[str, jax.Array], ...]  # layers x {name: array without the layers axis}
    final_norm: jax.Array  # [embed]
    lm_head: jax.Array | None  # [embed, vocab]; None when tied to `embed`


KERNELS = ("q", "k", "v", "o", "gate", "up", "down")  # block weights that enter a matrix product


@functools.partial(jax.jit, static_argnums=1)
def _cast_matrices(weights: tuple, dtype: Any) -> tuple:
    """Cast (stacked blocks, embedding, LM head) to `dtype`, the blocks' kernels only."""
    stacked, embed, head = weights
    stacked = {name: value.astype(dtype) if name in KERNELS else value for name, value in stacked.items()}
    return stacked, embed.astype(dtype), None if head is None else head.astype(dtype)


@functools.partial(jax.jit, static_argnums=1)
def _unstack(stacked: dict[str, jax.Array], num_layers: int) -> tuple[dict[str, jax.Array], ...]:
    return tuple({name: value[i] for name, value in stacked.items()} for i in range(num_layers))


def _block(
    cfg: ModelConfig,
    x: jax.Array,  # [B, T, E]
    p: dict[str, jax.Array],  # one layer's weights
    cos: jax.Array,  # [B, T, D]
    sin: jax.Array,  # [B, T, D]
    mask: jax.Array,  # [B, T, S] bool
    cache_k: jax.Array | None = None,  # [B, K, S, D], or [B, K, D, S] for fp32 keys
    cache_v: jax.Array | None = None,  # [B, K, S, D]
    cache_offset: jax.Array | int = 0,
    matmul_dtype: Any = None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Run one pre-norm decoder block. With a cache, write this call's keys and values at cache_offset.

    Kernels are multiplied in `matmul_dtype` (default: the compute dtype), accumulating in the
    compute dtype; everything else runs in the compute dtype.
    """
    dtype = cfg.compute_jnp_dtype
    kernel_dtype = matmul_dtype or dtype
    p = {name: value.astype(kernel_dtype if name in KERNELS else dtype) for name, value in p.items()}
    h = layers.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q = layers.project("bte,ehd->bthd", h, p["q"])
    k = layers.project("bte,ekd->btkd", h, p["k"])
    v = layers.project("bte,ekd->btkd", h, p["v"])
    if cfg.attention_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    q = layers.apply_rope(q, cos, sin)
    k = layers.apply_rope(k, cos, sin).transpose(0, 2, 1, 3)  # [B, K, T, D]
    v = v.transpose(0, 2, 1, 3)
    slots_last = cache_k is not None and layers.keys_slots_last(cache_k.dtype)
    if cache_k is not None:
        start = (0, 0, cache_offset, 0)
        k_start = (0, 0, 0, cache_offset) if slots_last else start
        k_slots = k.swapaxes(2, 3) if slots_last else k  # [B, K, D, T] or [B, K, T, D]
        cache_k = jax.lax.dynamic_update_slice(cache_k, k_slots.astype(cache_k.dtype), k_start)
        cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
        k, v = cache_k, cache_v  # attention reads a narrower cache in its own dtype
    attended = layers.grouped_query_attention(q, k, v, mask, keys_slots_last=slots_last)
    x = x + layers.project("bthd,hde->bte", attended, p["o"])
    h = layers.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    x = x + layers.swiglu(h, p["gate"], p["up"], p["down"])
    return x, cache_k, cache_v


def cached_hidden_states(
    cfg: ModelConfig,
    weights: DecodeWeights,
    tokens: jax.Array,  # [B, T] int32
    positions: jax.Array,  # [B, T] int32
    kv_valid: jax.Array,  # [B, S] bool, S the cache length
    cache: KVCache,
    cache_offset: jax.Array | int,
    matmul_dtype: Any = None,
) -> tuple[jax.Array, KVCache]:
    """Run the blocks on a KV cache; return hidden states [B, T, E] after the final norm, and the cache.

    Decoding reads every weight once per token, so the layers run unrolled, each on its own
    weight arrays and cache buffer: nothing is sliced or copied inside a decode step. Kernels
    are multiplied in `matmul_dtype` (default: the compute dtype).
    """
    dtype = cfg.compute_jnp_dtype
    x = jnp.take(weights.embed, tokens, axis=0).astype(dtype)  # [B, T, E]
    cos, sin = layers.rope_tables(positions, layers.rope_inverse_frequencies(cfg))
    mask = layers.attention_mask(kv_valid, tokens.shape[1], cache_offset)
    new_k, new_v = [], []
    for p, layer_k, layer_v in zip(weights.blocks, cache.k, cache.v, strict=True):
        x, layer_k, layer_v = _block(cfg, x, p, cos, sin, mask, layer_k, layer_v, cache_offset, matmul_dtype)
        new_k.append(layer_k)
        new_v.append(layer_v)
    x = layers.rms_norm(x, weights.final_norm.astype(dtype), cfg.rms_norm_eps)
    return x, KVCache(tuple(new_k), tuple(new_v))


def decode_logits(cfg: ModelConfig, weights: DecodeWeights, hidden: jax.Array, matmul_dtype: Any = None) -> jax.Array:
    """Project hidden states [B, E] onto the vocabulary; return fp32 logits [B, V]."""
    dtype = matmul_dtype or cfg.compute_jnp_dtype  # layers.matmul casts hidden to it
    if weights.lm_head is None:
        # Contract with the embedding's embed axis directly: no transposed copy of the table.
        return layers.matmul("be,ve->bv", hidden, weights.embed.astype(dtype), jnp.float32)
    return layers.matmul("be,ev->bv", hidden, weights.lm_head.astype(dtype), jnp.float32)


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
