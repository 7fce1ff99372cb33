"""Process reward model: a Qwen2 backbone with the two-layer score head of Qwen2.5-Math-PRM.

The head is Linear(E, E) -> ReLU -> Linear(E, num_labels) on every token's final hidden state.
A step's reward is the probability of class 1 ("the step is correct") at the step-separator
token `<extra_0>` written after that step (Qwen2.5-Math-PRM-7B model card).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sphere_jax.models.config import ModelConfig
from sphere_jax.models.transformer import Transformer, _param, _zeros, positions_from_mask

STEP_SEPARATOR = "<extra_0>"
PRM_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


class ProcessRewardModel(nnx.Module):
    """Qwen2 backbone plus the per-token classification head of Qwen2.5-Math-PRM."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if not cfg.is_reward_model:
            raise ValueError(f"ProcessRewardModel needs num_labels > 0, got num_labels={cfg.num_labels}")
        self.cfg = cfg
        e, dt = cfg.hidden_size, cfg.param_jnp_dtype
        self.backbone = Transformer(cfg, rngs=rngs)
        self.score_hidden = _param(rngs, (e, e), ("embed", None), dt)
        self.score_hidden_bias = _zeros((e,), (None,), dt)
        self.score_out = _param(rngs, (e, cfg.num_labels), ("embed", None), dt)
        self.score_out_bias = _zeros((cfg.num_labels,), (None,), dt)

    def __call__(self, tokens: jax.Array, valid: jax.Array) -> jax.Array:
        """Return class logits [B, T, num_labels] fp32 for right- or left-padded tokens [B, T]."""
        hidden, _ = self.backbone.hidden_states(tokens, positions_from_mask(valid), valid)
        hidden = hidden.astype(jnp.float32)
        h = jax.nn.relu(hidden @ self.score_hidden.get_value().astype(jnp.float32) + self.score_hidden_bias.get_value())
        return h @ self.score_out.get_value().astype(jnp.float32) + self.score_out_bias.get_value().astype(jnp.float32)


def step_probabilities(logits: jax.Array, tokens: jax.Array, separator_id: int) -> tuple[jax.Array, jax.Array]:
    """Return P(class 1) [B, T] and a mask [B, T] of the separator positions where it is a step reward."""
    probs = jax.nn.softmax(logits, axis=-1)[..., 1]
    return probs, tokens == separator_id


def format_prm_input(question: str, steps: list[str]) -> list[dict[str, str]]:
    """Build the chat messages the PRM scores: the steps joined and closed by the separator."""
    answer = "".join(step + STEP_SEPARATOR for step in steps)
    return [
        {"role": "system", "content": PRM_SYSTEM_PROMPT},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]


def separator_token_id(tokenizer: Any) -> int:
    """Return the id of `<extra_0>`, checking that the tokenizer encodes it as one token.

    Raises:
        ValueError: the tokenizer has no `<extra_0>` token (it maps to the unknown token).
    """
    token_id = tokenizer.convert_tokens_to_ids(STEP_SEPARATOR)
    unknown = token_id is None or (token_id == tokenizer.unk_token_id and tokenizer.unk_token != STEP_SEPARATOR)
    if unknown or tokenizer.encode(STEP_SEPARATOR, add_special_tokens=False) != [token_id]:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no single token {STEP_SEPARATOR!r} to mark step ends; "
            f"use the PRM's own tokenizer, or add it with "
            f"tokenizer.add_special_tokens({{'additional_special_tokens': [{STEP_SEPARATOR!r}]}})"
        )
    return int(token_id)


def tokenize_prm_inputs(tokenizer: Any, items: Sequence[tuple[str, Sequence[str]]], separator_id: int) -> list[list[int]]:
    """Render each (question, steps) item with the chat template and return its token ids.

    Raises:
        ValueError: a step contains the separator itself, or the rendered tokens do not contain
            exactly one separator per step.
    """
    rows = []
    for index, (question, steps) in enumerate(items):
        if isinstance(steps, str):
            raise ValueError(f"item {index}: steps must be a list of strings, got one string {steps[:40]!r}")
        for step_index, step in enumerate(steps):
            if STEP_SEPARATOR in step:
                raise ValueError(
                    f"item {index}, step {step_index} contains the separator {STEP_SEPARATOR!r}; "
                    "remove it, the scorer writes one after every step"
                )
        text = tokenizer.apply_chat_template(format_prm_input(question, list(steps)), tokenize=False)
        # The chat template already writes every special token, so the tokenizer must add none.
        ids = tokenizer.encode(text, add_special_tokens=False)
        found = ids.count(separator_id)
        if found != len(steps):
            raise ValueError(
                f"item {index}: the rendered input contains {found} separator tokens for {len(steps)} steps; "
                "the chat template or tokenizer changes the step text"
            )
        rows.append(ids)
    return rows


def pad_right(rows: Sequence[Sequence[int]], multiple: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token rows into tokens [B, L] int32 and valid [B, L] bool.

    L is the longest row rounded up to `multiple`, so batches of similar length share one
    compiled forward.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    if not rows:
        raise ValueError("rows is empty; pass at least one token row")
    longest = max(len(row) for row in rows)
    length = -(-longest // multiple) * multiple
    tokens = np.full((len(rows), length), pad_id, np.int32)
    valid = np.zeros((len(rows), length), bool)
    for b, row in enumerate(rows):
        tokens[b, : len(row)] = row
        valid[b, : len(row)] = True
    return tokens, valid


@jax.jit
def _positive_probabilities(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: jax.Array,  # [B, L] int32
    valid: jax.Array,  # [B, L] bool
) -> jax.Array:
    # The weights arrive as an argument rather than a closure constant, so one compiled function
    # serves every set of weights of the same shapes and dtypes.
    model = nnx.merge(graphdef, state)
    logits = model(tokens, valid)
    return jax.nn.softmax(logits, axis=-1)[..., 1]  # [B, L]


def score_steps(
    prm: ProcessRewardModel,
    tokenizer: Any,
    items: Sequence[tuple[str, Sequence[str]]],
    *,
    pad_multiple: int = 64,
) -> list[list[float]]:
    """Score a batch of (question, steps) items in one forward; return each step's reward.

    A step's reward is P(class 1) at the separator token written after it. Items are
    right-padded into one batch, which changes no reward because attention is causal and
    padding is masked.

    Args:
        prm: the reward model, for example `load_model(folder).model` of a Qwen2.5-Math-PRM folder.
        tokenizer: the PRM's tokenizer, with a chat template and the `<extra_0>` token.
        items: (question, steps) pairs; each step is the text of one reasoning step.
        pad_multiple: the batch length is rounded up to a multiple of this, to reuse compiles.

    Returns:
        One list per item with one reward in [0, 1] per step, in step order.

    Raises:
        ValueError: the model has fewer than two classes, the tokenizer lacks `<extra_0>`, or an
            input is too long or uses token ids outside the model's vocabulary.
    """
    cfg = prm.cfg
    if cfg.num_labels < 2:
        raise ValueError(f"score_steps needs a head with at least 2 classes, got num_labels={cfg.num_labels}")
    if not items:
        return []
    separator_id = separator_token_id(tokenizer)
    rows = tokenize_prm_inputs(tokenizer, items, separator_id)
    for index, row in enumerate(rows):
        if len(row) > cfg.max_position_embeddings:
            raise ValueError(
                f"item {index} has {len(row)} tokens, more than max_position_embeddings="
                f"{cfg.max_position_embeddings}; shorten the question or the steps"
            )
        if max(row) >= cfg.vocab_size:
            raise ValueError(
                f"item {index} has token id {max(row)}, outside the model vocabulary of {cfg.vocab_size}; "
                "the tokenizer does not belong to this model"
            )
    tokens, valid = pad_right(rows, pad_multiple)
    graphdef, state = nnx.split(prm)
    probabilities = np.asarray(_positive_probabilities(graphdef, state, jnp.asarray(tokens), jnp.asarray(valid)))
    rewards = []
    for b, row in enumerate(rows):
        positions = [t for t, token in enumerate(row) if token == separator_id]
        rewards.append([float(probabilities[b, t]) for t in positions])
    return rewards
