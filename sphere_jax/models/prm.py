"""Process reward model: a Qwen2 backbone with the two-layer score head of Qwen2.5-Math-PRM.

The head is Linear(E, E) -> ReLU -> Linear(E, num_labels) on every token's final hidden state.
A step's reward is the probability of class 1 ("the step is correct") at the step-separator
token `<extra_0>` written after that step (Qwen2.5-Math-PRM-7B model card).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
        h = jax.nn.relu(hidden @ self.score_hidden.value.astype(jnp.float32) + self.score_hidden_bias.value)
        return h @ self.score_out.value.astype(jnp.float32) + self.score_out_bias.value.astype(jnp.float32)


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
