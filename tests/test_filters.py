"""The pure sampling functions against numpy: greedy choice, inverse-CDF draws, filtering."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_jax.sampling.filters import greedy_tokens, sample_full_vocabulary, sample_tokens


@pytest.mark.parametrize("vocab", [151936, 49152, 1000, 7, 1])
def test_greedy_tokens_equal_argmax(vocab):
    rng = np.random.default_rng(vocab)
    logits = rng.normal(size=(6, vocab)).astype(np.float32)
    assert np.array_equal(np.asarray(greedy_tokens(jnp.asarray(logits))), logits.argmax(axis=-1))


def test_greedy_tokens_first_tied_maximum():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, size=(16, 4096)).astype(np.float32)  # many ties at the maximum
    logits[3] = 1.0  # a row with every entry tied
    logits[5, 4000] = 9.0  # a row whose only maximum sits in the last block
    expected = logits.argmax(axis=-1)
    assert expected[3] == 0
    assert expected[5] == 4000
    assert np.array_equal(np.asarray(greedy_tokens(jnp.asarray(logits))), expected)


def test_full_vocabulary_draw_inverts_the_cdf():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]] * 5, np.float32))
    uniform = np.array([0.0, 0.05, 0.25, 0.55, 0.95], np.float32)
    expected = np.searchsorted(np.cumsum([0.1, 0.2, 0.3, 0.4]), uniform, side="right")
    drawn = sample_full_vocabulary(jnp.asarray(logits), jnp.asarray(uniform))
    assert np.asarray(drawn).tolist() == expected.tolist() == [0, 0, 1, 2, 3]


def test_greedy_and_sampled_rows_in_one_batch():
    logits = jnp.asarray(np.log(np.array([[0.1, 0.2, 0.3, 0.4]] * 3, np.float32)))
    temperature = jnp.asarray([0.0, 1.0, 1.0])
    top_k = jnp.asarray([0, 0, 1], jnp.int32)
    top_p = jnp.ones(3)
    uniform = jnp.asarray([0.01, 0.01, 0.01])
    tokens = jax.jit(sample_tokens, static_argnums=5)(logits, temperature, top_k, top_p, uniform, 4)
    # Row 0 is greedy, row 1 draws the first token at u = 0.01, row 2 keeps only the best token.
    assert np.asarray(tokens).tolist() == [3, 0, 3]
