"""Grouped-query attention reading a bf16 KV cache under fp32 queries, at decode and prefill shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_jax.models.layers import grouped_query_attention, keys_slots_last


@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("length", [1, 5])
def test_bf16_cache_matches_fp32(batch, length):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, length, 9, 64))  # 9 query heads over 3 KV heads
    k = jax.random.normal(keys[1], (batch, 3, 32, 64))
    v = jax.random.normal(keys[2], (batch, 3, 32, 64))
    mask = jnp.tril(jnp.ones((length, 32), bool), k=32 - length)[None].repeat(batch, axis=0)

    exact = grouped_query_attention(q, k, v, mask)
    narrow = jax.jit(grouped_query_attention)(q, k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask)

    assert narrow.dtype == jnp.float32
    assert narrow.shape == (batch, length, 9, 64)
    np.testing.assert_allclose(np.asarray(narrow), np.asarray(exact), atol=0.05)
    assert not np.allclose(np.asarray(narrow), np.asarray(exact), atol=1e-6)  # bf16 rounding took part


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("length", [1, 5])
def test_slots_last_keys_match_slots_second(dtype, length):
    """Keys stored [B, K, D, S] (fp32 KV caches) give the attention of keys stored [B, K, S, D]."""
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (2, length, 9, 64))
    k = jax.random.normal(keys[1], (2, 3, 32, 64)).astype(dtype)
    v = jax.random.normal(keys[2], (2, 3, 32, 64)).astype(dtype)
    mask = jax.random.bernoulli(keys[0], 0.7, (2, length, 32)).at[:, :, 0].set(True)

    expected = jax.jit(grouped_query_attention)(q, k, v, mask)
    slots_last = jax.jit(grouped_query_attention, static_argnames="keys_slots_last")(
        q, k.swapaxes(2, 3), v, mask, keys_slots_last=True
    )

    np.testing.assert_allclose(np.asarray(slots_last), np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(expected).max()) > 0.1  # the values compared are not all near zero


def test_cache_layout_follows_dtype():
    assert keys_slots_last(jnp.float32)
    assert not keys_slots_last(jnp.bfloat16)
