"""Shared fixtures: tiny random HF checkpoints and the real packaged SmolLM2 model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path

import pytest

SMOLLM2 = "packaged:smollm2-135m-instruct"
QWEN_CODER = "packaged:qwen2.5-coder-0.5b-instruct"


def tiny_hf_config(family: str, **overrides):
    """A small transformers config of the given family with real-model quirks turned on."""
    import transformers

    common = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(overrides)
    if family == "llama":
        common.setdefault("tie_word_embeddings", False)
        return transformers.LlamaConfig(**common)
    common.setdefault("tie_word_embeddings", True)
    return transformers.Qwen2Config(**common)


def save_tiny_hf_model(family: str, folder: Path, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialised transformers model (fp32) to `folder` and return it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = tiny_hf_config(family, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random biases, so a bias mapped wrongly changes the logits
        for name, param in model.named_parameters():
            if name.endswith(("bias", "norm.weight", "layernorm.weight")):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """The converted-weights cache: the user's default one, so real models convert only once."""
    from sphere_jax.weights.load import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def smollm2(model_cache):
    from sphere_jax.weights.load import load_model

    return load_model(SMOLLM2, cache_dir=model_cache)
