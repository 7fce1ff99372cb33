"""Build an HF tokenizer from a GGUF file's metadata without torch.

transformers can load a GGUF tokenizer (`AutoTokenizer.from_pretrained(..., gguf_file=...)`), but
its GGUF reader imports torch, which sphere_jax does not need. The vocabulary, merges, special
token ids and chat template are plain metadata, so this module reads them with the `gguf` package
and hands them to the same transformers converter that builds the `tokenizers` backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphere_jax.weights import gguf_import
from sphere_jax.weights.mapping import WeightError

# GGUF metadata key (after "tokenizer.") -> the name transformers' converter expects.
_TOKENIZER_KEYS = {
    "ggml.model": "tokenizer_type",
    "ggml.pre": "pre_tokenizer_type",
    "ggml.tokens": "tokens",
    "ggml.scores": "scores",
    "ggml.token_type": "token_type",
    "ggml.merges": "merges",
    "ggml.precompiled_charsmap": "precompiled_charsmap",
    "ggml.bos_token_id": "bos_token_id",
    "ggml.eos_token_id": "eos_token_id",
    "ggml.unknown_token_id": "unk_token_id",
    "ggml.padding_token_id": "pad_token_id",
    "ggml.add_space_prefix": "add_prefix_space",
}
_CONFIG_KEYS = {"chat_template": "chat_template", "ggml.add_bos_token": "add_bos_token", "ggml.add_eos_token": "add_eos_token"}
_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unk_token_id", "pad_token": "pad_token_id"}


def gguf_tokenizer_fields(path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Return (architecture, tokenizer fields, tokenizer config) read from the GGUF metadata."""
    reader = gguf_import.open_gguf(path)

    def field(key: str) -> Any:
        found = reader.fields.get(key)
        return None if found is None else found.contents()

    architecture = field("general.architecture")
    tokenizer = {name: value for key, name in _TOKENIZER_KEYS.items() if (value := field(f"tokenizer.{key}")) is not None}
    config = {name: value for key, name in _CONFIG_KEYS.items() if (value := field(f"tokenizer.{key}")) is not None}
    if "tokens" not in tokenizer:
        raise WeightError(f"{path}: no tokenizer.ggml.tokens in the GGUF metadata, so no tokenizer")
    if tokenizer.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)  # sentencepiece vocabularies add BOS unless the file sets add_bos_token
    for name, id_key in _SPECIAL_TOKENS.items():
        token_id = tokenizer.get(id_key)
        config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    return architecture, tokenizer, config


def gguf_tokenizer(path: Path) -> Any:
    """Return a transformers fast tokenizer for the GGUF file at `path`."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    architecture, fields, config = gguf_tokenizer_fields(path)
    backend, extra = convert_gguf_tokenizer(architecture, fields)
    config = {name: value for name, value in {**config, **extra}.items() if value is not None}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config)
