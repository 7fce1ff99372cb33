"""Our decoder against transformers on random tiny Llama and Qwen2 checkpoints, fp32."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import save_tiny_hf_model
from sphere_jax.models.logprobs import sequence_logprobs
from sphere_jax.models.transformer import positions_from_mask
from sphere_jax.weights.export import export_hf
from sphere_jax.weights.load import load_model

TOKENS = np.array([[5, 17, 99, 3, 42, 8, 11, 64], [7, 7, 120, 33, 2, 91, 15, 4]], dtype=np.int32)

FAMILIES = {
    "llama": {},
    "llama3_rope_scaling": dict(
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    ),
    "qwen2": {},
}


def torch_logits(folder, tokens, attention_mask=None):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        mask = None if attention_mask is None else torch.tensor(attention_mask)
        return model(torch.tensor(tokens, dtype=torch.long), attention_mask=mask).logits.numpy()


def our_logits(loaded, tokens, valid=None):
    tokens = jnp.asarray(tokens)
    valid = jnp.ones(tokens.shape, bool) if valid is None else jnp.asarray(valid)
    logits, _ = loaded.model(tokens, positions_from_mask(valid), valid)
    return np.asarray(logits)


@pytest.mark.parametrize("case", sorted(FAMILIES))
def test_logits_match_transformers(tmp_path, case):
    family = "qwen2" if case.startswith("qwen2") else "llama"
    folder = save_tiny_hf_model(family, tmp_path / "hf", **FAMILIES[case])
    loaded = load_model(str(folder), with_tokenizer=False)
    expected = torch_logits(folder, TOKENS)
    assert np.max(np.abs(our_logits(loaded, TOKENS) - expected)) <= 1e-4


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_export_reload_in_transformers(tmp_path, family):
    folder = save_tiny_hf_model(family, tmp_path / "hf")
    loaded = load_model(str(folder), with_tokenizer=False)
    exported = export_hf(loaded.model, loaded.config, tmp_path / "export")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        exported, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    with torch.no_grad():
        reloaded = model(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
    assert np.max(np.abs(our_logits(loaded, TOKENS) - reloaded)) <= 1e-4


def test_export_shards_above_threshold(tmp_path):
    folder = save_tiny_hf_model("llama", tmp_path / "hf")
    loaded = load_model(str(folder), with_tokenizer=False)
    exported = export_hf(loaded.model, loaded.config, tmp_path / "export", max_shard_bytes=40_000)
    shards = sorted(p.name for p in exported.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert (exported / "model.safetensors.index.json").is_file()
    again = load_model(str(exported), with_tokenizer=False)
    assert np.max(np.abs(our_logits(again, TOKENS) - our_logits(loaded, TOKENS))) == 0.0


def test_left_padding_matches_unpadded(tmp_path):
    folder = save_tiny_hf_model("qwen2", tmp_path / "hf")
    loaded = load_model(str(folder), with_tokenizer=False)
    row = TOKENS[:1, :5]
    padded = np.concatenate([np.zeros((1, 3), np.int32), row], axis=1)
    valid = np.concatenate([np.zeros((1, 3), bool), np.ones((1, 5), bool)], axis=1)
    unpadded_logits = our_logits(loaded, row)
    padded_logits = our_logits(loaded, padded, valid)[:, 3:]
    assert np.max(np.abs(padded_logits - unpadded_logits)) <= 1e-5


def test_sequence_logprobs_match_log_softmax(tmp_path):
    folder = save_tiny_hf_model("llama", tmp_path / "hf")
    loaded = load_model(str(folder), with_tokenizer=False)
    valid = np.ones(TOKENS.shape, bool)
    valid[1, 6:] = False
    ours = np.asarray(sequence_logprobs(loaded.model, jnp.asarray(TOKENS), jnp.asarray(valid), chunk_size=3))
    logits = torch.tensor(our_logits(loaded, TOKENS, valid))
    reference = torch.log_softmax(logits, -1)[:, :-1].gather(-1, torch.tensor(TOKENS[:, 1:, None]).long())[..., 0]
    reference = reference.numpy() * (valid[:, 1:] & valid[:, :-1])
    assert ours[:, 0].tolist() == [0.0, 0.0]
    assert np.max(np.abs(ours[:, 1:] - reference)) <= 1e-5
