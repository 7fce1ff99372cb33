"""KVCache.write places a prefill tier's keys and values at the right rows and slots in both layouts."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sphere_jax.models.layers import keys_slots_last
from sphere_jax.models.transformer import KVCache


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_write_places_rows_and_slots(dtype):
    rows, kv_heads, head_dim, length, part_length, offset = 4, 2, 8, 10, 3, 5
    slots_last = keys_slots_last(dtype)
    k_shape = (rows, kv_heads, head_dim, length) if slots_last else (rows, kv_heads, length, head_dim)
    cache = KVCache((jnp.zeros(k_shape, dtype),), (jnp.zeros((rows, kv_heads, length, head_dim), dtype),))
    part_k = np.arange(2 * kv_heads * part_length * head_dim, dtype=np.float32).reshape(2, kv_heads, part_length, head_dim)
    part_v = -part_k
    part = KVCache(
        (jnp.asarray(part_k.swapaxes(2, 3) if slots_last else part_k, dtype),),
        (jnp.asarray(part_v, dtype),),
    )

    written = cache.write(part, jnp.asarray([2, rows]), offset)  # row index `rows` is padding: dropped

    keys = np.asarray(written.k[0], np.float32)
    keys = keys.swapaxes(2, 3) if slots_last else keys  # [rows, kv_heads, length, head_dim]
    values = np.asarray(written.v[0], np.float32)
    assert written.length == length
    np.testing.assert_array_equal(keys[2, :, offset : offset + part_length], part_k[0])
    np.testing.assert_array_equal(values[2, :, offset : offset + part_length], part_v[0])
    assert np.count_nonzero(keys) == np.count_nonzero(part_k[0])  # nothing else written, padding row dropped
    assert np.count_nonzero(values) == np.count_nonzero(part_v[0])
