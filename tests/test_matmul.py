"""layers.matmul: half-precision products of one row, computed on two rows, give that row's values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from sphere_jax.models import layers


def _reference(spec: str, x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Return the product in fp64 of x rounded to bf16 and the bf16 kernel."""
    rounded = x.astype(ml_dtypes.bfloat16).astype(np.float64)
    return np.einsum(spec, rounded, kernel.astype(np.float64))


@pytest.mark.parametrize(
    ("spec", "x_shape", "kernel_shape", "rows"),
    [
        ("be,ev->bv", (1, 64), (64, 300), 1),  # an LM head on one row
        ("bte,ehd->bthd", (1, 1, 64), (64, 4, 8), 1),  # a decode step's query projection
        ("bthd,hde->bte", (1, 1, 4, 8), (4, 8, 64), 1),  # its output projection
        ("bte,ef->btf", (1, 5, 64), (64, 96), 5),  # a prefill of five tokens: left as it is
        ("be,ev->bv", (3, 64), (64, 300), 3),
    ],
)
def test_bf16_products_match_reference(spec, x_shape, kernel_shape, rows):
    rng = np.random.default_rng(0)
    x = rng.normal(size=x_shape).astype(np.float32)
    kernel = rng.normal(size=kernel_shape).astype(ml_dtypes.bfloat16)
    assert layers._rows(spec, jnp.asarray(x), jnp.asarray(kernel)) == rows
    out = jax.jit(lambda x, k: layers.matmul(spec, x, k, jnp.float32))(jnp.asarray(x), jnp.asarray(kernel))
    assert out.shape == _reference(spec, x, kernel).shape
    np.testing.assert_allclose(np.asarray(out), _reference(spec, x, kernel), rtol=1e-5, atol=1e-4)


def test_one_row_kernel_stays_bf16():
    """Check that no fp32 copy of the kernel is compiled: XLA on CPU makes one for a one-row product."""
    x = jnp.ones((1, 64), jnp.float32)
    kernel = jnp.ones((64, 300), jnp.bfloat16)
    compiled = jax.jit(lambda x, k: layers.matmul("be,ev->bv", x, k, jnp.float32)).lower(x, kernel).compile()
    assert "f32[64,300]" not in compiled.as_text()


def test_one_row_spec_without_leading_batch_axis_raises():
    x = jnp.ones((64, 1), jnp.float32)
    kernel = jnp.ones((64, 300), jnp.bfloat16)
    with pytest.raises(ValueError, match="first axis must also lead the output"):
        layers.matmul("eb,ev->bv", x, kernel, jnp.float32)
