"""Read a GGUF file: model config from its metadata, dequantized tensors under HF names.

llama.cpp's converter permutes the rows of Llama-family q and k projections so that its RoPE
kernel can rotate interleaved pairs; `unpermute_rows` restores the HF half-split layout. Qwen2
GGUF files use the half-split ("neox") rotation and are not permuted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sphere_jax.models.config import ConfigError, ModelConfig
from sphere_jax.weights.mapping import WeightError

_GGUF_TO_HF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_TO_HF_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def open_gguf(path: Path) -> Any:
    from gguf import GGUFReader

    if not path.is_file():
        raise WeightError(f"{path}: GGUF file not found")
    try:
        return GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as error:
        raise WeightError(f"{path}: not a readable GGUF file ({error})") from None


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def gguf_hf_config(reader: Any, path: Path) -> dict[str, Any]:
    """Translate GGUF metadata into HF `config.json` fields."""
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise ConfigError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: {', '.join(_ARCHITECTURES)}"
        )
    names = {tensor.name for tensor in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ConfigError(f"{path}: GGUF rope_freqs tensors (Llama 3.1 scaling) are not supported; load the HF folder")
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    vocab = _field(reader, f"{arch}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0))}
    scaling_type = _field(reader, f"{arch}.rope.scaling.type")
    if scaling_type == "linear":
        rope.update(rope_type="linear", factor=float(_field(reader, f"{arch}.rope.scaling.factor")))
    elif scaling_type not in (None, "none"):
        raise ConfigError(f"{path}: GGUF rope scaling {scaling_type!r} is not supported")
    return {
        "architectures": [_ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, f"{arch}.rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_parameters": rope,
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }


def unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, interleaved pairs back to two halves."""
    rows = weight.shape[0]
    head_dim = rows // heads
    return (
        weight.reshape(heads, head_dim // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def iter_gguf_tensors(reader: Any, cfg: ModelConfig, path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, fp32 array in HF layout) for every tensor, dequantized one at a time."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    for tensor in reader.tensors:
        name = _hf_name(tensor.name, path)
        if name is None:
            continue
        if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            array = np.asarray(tensor.data, dtype=np.float32)
        else:
            array = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        # GGUF lists dimensions fastest-first; numpy wants the reverse.
        array = array.reshape(tuple(int(d) for d in reversed(tensor.shape)))
        if cfg.family == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_heads if name.endswith("q_proj.weight") else cfg.num_kv_heads
            array = unpermute_rows(array, heads)
        yield name, array


def _hf_name(gguf_name: str, path: Path) -> str | None:
    if gguf_name in _GGUF_TO_HF_TOP:
        return _GGUF_TO_HF_TOP[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _GGUF_TO_HF_LAYER:
        return f"model.layers.{parts[1]}.{_GGUF_TO_HF_LAYER[parts[2]]}"
    raise WeightError(f"{path}: GGUF tensor {gguf_name!r} has no HF counterpart")
