"""Per-token log-probabilities computed in sequence chunks, never the full [B, T, V] log-softmax."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sphere_jax.models.transformer import Transformer, positions_from_mask


def chunked_token_logprobs(
    hidden: jax.Array,  # [B, T, E]
    head: jax.Array,  # [E, V]
    targets: jax.Array,  # [B, T] int32
    chunk_size: int = 128,
) -> jax.Array:
    """Return log p(targets[b, t]) under logits `hidden[b, t] @ head`, as [B, T] fp32.

    Only one [B, chunk_size, V] block of logits exists at a time, in the forward and, because
    each chunk is rematerialised, in the backward too. With Qwen2's 151,936-entry vocabulary a
    full fp32 log-softmax at batch 8 and length 1024 would need 5 GB.
    """
    batch, length, embed = hidden.shape
    chunk_size = min(chunk_size, length)
    padded = -(-length // chunk_size) * chunk_size
    if padded != length:
        hidden = jnp.pad(hidden, ((0, 0), (0, padded - length), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, padded - length)))
    chunks = padded // chunk_size
    hidden_chunks = hidden.reshape(batch, chunks, chunk_size, embed).swapaxes(0, 1)
    target_chunks = targets.reshape(batch, chunks, chunk_size).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(args):
        h, t = args  # [B, C, E], [B, C]
        logits = jnp.einsum("bce,ev->bcv", h, head, preferred_element_type=jnp.float32)
        log_normalizer = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return picked - log_normalizer

    out = jax.lax.map(one_chunk, (hidden_chunks, target_chunks))  # [chunks, B, C]
    return out.swapaxes(0, 1).reshape(batch, padded)[:, :length]


def sequence_logprobs(
    model: Transformer,
    tokens: jax.Array,  # [B, T] int32
    valid: jax.Array,  # [B, T] bool, false on padding
    *,
    chunk_size: int = 128,
    remat: bool = False,
) -> jax.Array:
    """Return [B, T] fp32 where entry t is log p(tokens[t] | tokens[:t]); entry 0 and padding are 0.

    This is the training-side definition that the sampler's returned log-probs must match.
    """
    positions = positions_from_mask(valid)
    hidden, _ = model.hidden_states(tokens, positions, valid, remat=remat)
    scores = chunked_token_logprobs(hidden[:, :-1], model.output_embedding(), tokens[:, 1:], chunk_size)
    scores = jnp.where(valid[:, 1:] & valid[:, :-1], scores, 0.0)
    return jnp.pad(scores, ((0, 0), (1, 0)))
