"""Pure functions for the decoder's math: RMSNorm, RoPE, grouped-query attention and SwiGLU."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from sphere_jax.models.config import ModelConfig


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in fp32 and cast back to the input dtype, as the HF models do."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * scale.astype(jnp.float32)).astype(x.dtype)


def rope_inverse_frequencies(cfg: ModelConfig) -> jax.Array:
    """Return the RoPE inverse frequencies, [head_dim // 2] fp32, with linear or Llama 3 scaling."""
    exponents = jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta**exponents)
    scaling = cfg.rope_scaling
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
        low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
        high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, blended)
        return jnp.where(wavelen < high_wavelen, inv_freq, scaled)
    return inv_freq


def rope_tables(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return cos and sin tables [batch, length, head_dim] fp32 for integer positions [batch, length]."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [batch, length, heads, head_dim] by position (the HF half-split convention)."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def attention_mask(kv_valid: jax.Array, query_length: int, cache_offset: jax.Array | int) -> jax.Array:
    """Build the causal and padding mask [batch, query_length, kv_length] as booleans.

    Query i sits at cache slot `cache_offset + i` and sees key slot s when s is at or before it
    and `kv_valid[b, s]` is true.
    """
    kv_length = kv_valid.shape[1]
    query_slots = cache_offset + jnp.arange(query_length)[:, None]  # [T, 1]
    key_slots = jnp.arange(kv_length)[None, :]  # [1, S]
    causal = key_slots <= query_slots  # [T, S]
    return causal[None, :, :] & kv_valid[:, None, :]


def keys_slots_last(dtype: Any) -> bool:
    """Return whether a KV cache of `dtype` stores keys slots-last, [B, K, D, S], not [B, K, S, D].

    The decode step's q.k product reads slots-last keys as they lie. For fp32 keys of 32 rows
    over 288 slots it took 0.5 ms per layer against 1.0 ms (jax 0.10.2, 2-core AMD EPYC,
    `docs/benchmarks_sampler.md`). Half-precision keys stay [B, K, S, D] because XLA on CPU
    writes a bf16 cache slot by rewriting the whole buffer through fp32. That is fast only when
    the new slot's values are contiguous: 0.1 ms per layer, against 1.0 ms slots-last.
    """
    return jnp.dtype(dtype).itemsize >= 4


def grouped_query_attention(
    q: jax.Array,  # [B, T, H, D]
    k: jax.Array,  # [B, K, S, D], or [B, K, D, S] with keys_slots_last
    v: jax.Array,  # [B, K, S, D]
    mask: jax.Array,  # [B, T, S] bool
    *,
    keys_slots_last: bool = False,
) -> jax.Array:
    """Scaled dot-product attention with H query heads sharing K key/value heads; returns [B, T, H, D].

    Keys and values come heads-first (the KV cache layouts), so both products are batched over
    (B, K) without transposing the cache. With [B, S, K, D], XLA on CPU copies the whole cache
    into that order at every decode step.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    # A bf16 cache under fp32 activations: multiply in bf16, accumulate and return fp32.
    out_dtype = q.dtype
    q = q.astype(k.dtype)
    if length == 1:
        # One query per row (a decode step): batched matrix-vector products over (B, K), half
        # the time on CPU of the general form, whose length-1 axis makes XLA transpose.
        q = q.reshape(batch, kv_heads, groups, head_dim)
        spec = "bkgd,bkds->bkgs" if keys_slots_last else "bkgd,bksd->bkgs"
        scores = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) / math.sqrt(head_dim)
        scores = jnp.where(mask[:, :, None, :], scores, jnp.finfo(jnp.float32).min)  # mask [B, 1, S]
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgs,bksd->bkgd", probs, v, preferred_element_type=out_dtype)
        return out.reshape(batch, 1, heads, head_dim)
    q = q.reshape(batch, length, kv_heads, groups, head_dim)
    if keys_slots_last:
        # Queries go heads-first too, [B, K, G, T, D]. With [B, T, K, G, D] queries against
        # slots-last keys, XLA on CPU raises "Unsupported element type" for bf16 x bf16 -> fp32.
        scores = jnp.einsum("bkgtd,bkds->bkgts", q.transpose(0, 2, 3, 1, 4), k, preferred_element_type=jnp.float32)
    else:
        scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(head_dim)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    # Heads-first output, then a transpose: XLA on CPU has no bf16 x bf16 -> fp32 dot that writes
    # [B, T, K, G, D] directly, and raises "Unsupported element type" at run time for batch > 1.
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v, preferred_element_type=out_dtype).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, length, heads, head_dim)


def project(spec: str, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Return einsum(spec, x, kernel) multiplied in the kernel's dtype and accumulated in x's.

    With kernels of the activations' dtype this is a plain einsum. With bf16 kernels under fp32
    activations (a sampler's `matmul_dtype`), only the product's inputs are rounded to bf16; the
    result, and the norms, rotary embedding and attention around it, stay fp32.
    """
    return matmul(spec, x, kernel, x.dtype)


def matmul(spec: str, x: jax.Array, kernel: jax.Array, out_dtype: jnp.dtype) -> jax.Array:
    """Return einsum(spec, x, kernel) with x cast to the kernel's dtype, accumulated in `out_dtype`.

    x's first axis must also be the output's first axis. A half-precision product of one row
    runs on two rows. For one row, XLA on CPU converts the whole bf16 kernel to fp32 on every
    call: an LM head [896, 151936] then takes 175 ms, against 19.5 ms for two rows.
    """
    one_row = jnp.dtype(kernel.dtype).itemsize < 4 and _rows(spec, x, kernel) == 1
    if one_row:
        if spec[0] != spec.split("->")[1][0]:
            raise ValueError(
                f"matmul spec {spec!r}: x's first axis must also lead the output, because a one-row x is padded on it"
            )
        x = jnp.concatenate([x, jnp.zeros_like(x)], axis=0)
    out = jnp.einsum(spec, x.astype(kernel.dtype), kernel, preferred_element_type=out_dtype)
    return out[:1] if one_row else out


def _rows(spec: str, x: jax.Array, kernel: jax.Array) -> int:
    """Return the number of rows of x in the product `spec`: x's size over its contracted axes' sizes."""
    x_axes, kernel_axes = spec.split("->")[0].split(",")
    output_axes = spec.split("->")[1]
    contracted = [axis for axis in x_axes if axis.isalpha() and axis not in output_axes]
    return x.size // math.prod(kernel.shape[kernel_axes.index(axis)] for axis in contracted)


def swiglu(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
    """SwiGLU MLP: down(silu(x @ gate) * (x @ up)) with kernels [E, F], [E, F], [F, E]."""
    hidden = jax.nn.silu(project("...e,ef->...f", x, gate)) * project("...e,ef->...f", x, up)
    return project("...f,fe->...e", hidden, down)
