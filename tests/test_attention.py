"""Grouped-query attention reading a bf16 KV cache under fp32 queries, at decode and prefill shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_jax.models.layers import grouped_query_attention


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
