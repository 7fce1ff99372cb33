"""Mapping between HF checkpoint tensor names and this decoder's stacked parameters.

HF stores linear weights as [out, in]; this decoder stores kernels as [in, ...out] with the
per-head split made explicit (q: [embed, heads, head_dim]) and all layers stacked on axis 0.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Callable

import numpy as np

from sphere_jax.models.config import ModelConfig


class WeightError(ValueError):
    """A checkpoint tensor that is missing, unknown or of the wrong shape."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one HF tensor goes: a parameter path, a layer index (None if not stacked), and how."""

    path: tuple[str, ...]
    layer: int | None
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: tuple[int, ...]


_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# Tensors that some HF checkpoints carry but that are derived, not learned.
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias)$")


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


def _layer_targets(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], Callable, Callable, tuple[int, ...]]]:
    e, f, h, k, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def split_heads(heads: int):
        return lambda a: a.T.reshape(e, heads, d), lambda a: a.reshape(e, heads * d).T

    def bias(heads: int):
        return lambda a: a.reshape(heads, d), lambda a: a.reshape(heads * d)

    q_in, q_out = split_heads(h)
    kv_in, kv_out = split_heads(k)
    targets = {
        "input_layernorm.weight": (("layers", "attn_norm"), np.asarray, np.asarray, (e,)),
        "self_attn.q_proj.weight": (("layers", "q"), q_in, q_out, (h * d, e)),
        "self_attn.k_proj.weight": (("layers", "k"), kv_in, kv_out, (k * d, e)),
        "self_attn.v_proj.weight": (("layers", "v"), kv_in, kv_out, (k * d, e)),
        "self_attn.o_proj.weight": (
            ("layers", "o"),
            lambda a: a.T.reshape(h, d, e),
            lambda a: a.reshape(h * d, e).T,
            (e, h * d),
        ),
        "post_attention_layernorm.weight": (("layers", "mlp_norm"), np.asarray, np.asarray, (e,)),
        "mlp.gate_proj.weight": (("layers", "gate"), _transpose, _transpose, (f, e)),
        "mlp.up_proj.weight": (("layers", "up"), _transpose, _transpose, (f, e)),
        "mlp.down_proj.weight": (("layers", "down"), _transpose, _transpose, (e, f)),
    }
    if cfg.attention_bias:
        targets["self_attn.q_proj.bias"] = (("layers", "q_bias"), *bias(h), (h * d,))
        targets["self_attn.k_proj.bias"] = (("layers", "k_bias"), *bias(k), (k * d,))
        targets["self_attn.v_proj.bias"] = (("layers", "v_bias"), *bias(k), (k * d,))
    return targets


def _top_targets(cfg: ModelConfig, prefix: tuple[str, ...]) -> dict[str, Target]:
    e, v = cfg.hidden_size, cfg.vocab_size
    targets = {
        "model.embed_tokens.weight": Target(prefix + ("embed",), None, np.asarray, np.asarray, (v, e)),
        "model.norm.weight": Target(prefix + ("final_norm",), None, np.asarray, np.asarray, (e,)),
    }
    if cfg.is_reward_model:
        n = cfg.num_labels
        targets.update(
            {
                "score.0.weight": Target(("score_hidden",), None, _transpose, _transpose, (e, e)),
                "score.0.bias": Target(("score_hidden_bias",), None, np.asarray, np.asarray, (e,)),
                "score.2.weight": Target(("score_out",), None, _transpose, _transpose, (n, e)),
                "score.2.bias": Target(("score_out_bias",), None, np.asarray, np.asarray, (n,)),
            }
        )
    elif not cfg.tie_word_embeddings:
        targets["lm_head.weight"] = Target(prefix + ("lm_head",), None, _transpose, _transpose, (v, e))
    return targets


def hf_target(cfg: ModelConfig, name: str) -> Target | None:
    """Return where the HF tensor `name` goes, or None for a derived tensor that is skipped.

    Raises:
        WeightError: the name belongs to no parameter of this config.
    """
    prefix = ("backbone",) if cfg.is_reward_model else ()
    top = _top_targets(cfg, prefix)
    if name in top:
        return top[name]
    if _IGNORED.search(name):
        return None
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
        return None  # some tied checkpoints store the shared matrix twice
    match = _LAYER_KEY.match(name)
    if match:
        layer, rest = int(match.group(1)), match.group(2)
        layer_targets = _layer_targets(cfg)
        if rest in layer_targets and layer < cfg.num_layers:
            path, to_ours, to_hf, hf_shape = layer_targets[rest]
            return Target(prefix + path, layer, to_ours, to_hf, hf_shape)
    raise WeightError(
        f"tensor {name!r} matches no parameter of a {cfg.architecture or cfg.family} model with "
        f"{cfg.num_layers} layers"
    )


def hf_names(cfg: ModelConfig) -> Iterator[str]:
    """Yield every HF tensor name this config needs, in checkpoint order."""
    prefix = ("backbone",) if cfg.is_reward_model else ()
    top = _top_targets(cfg, prefix)
    yield "model.embed_tokens.weight"
    for layer in range(cfg.num_layers):
        for rest in _layer_targets(cfg):
            yield f"model.layers.{layer}.{rest}"
    yield "model.norm.weight"
    for name in top:
        if name not in ("model.embed_tokens.weight", "model.norm.weight"):
            yield name


def param_layout(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[tuple[int, ...], bool]]:
    """Return our shape for every parameter path, and whether it is stacked over layers."""
    layout: dict[tuple[str, ...], tuple[tuple[int, ...], bool]] = {}
    for name in hf_names(cfg):
        target = hf_target(cfg, name)
        assert target is not None
        ours = target.to_ours(np.empty(target.hf_shape, np.float32)).shape
        stacked = target.layer is not None
        layout[target.path] = (((cfg.num_layers,) + ours) if stacked else ours, stacked)
    return layout
