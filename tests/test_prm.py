"""Process reward model: the score head against numpy, and batched step scoring."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from conftest import SMOLLM2, tiny_hf_config
from sphere_jax.models.prm import STEP_SEPARATOR, ProcessRewardModel, score_steps
from sphere_jax.weights.load import load_model, resolve_folder

TOKENS = np.array([[5, 17, 99, 3, 42, 8, 11, 64], [7, 7, 120, 33, 2, 91, 15, 4]], dtype=np.int32)

ITEMS = [
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        ["In May she sold 48 / 2 = 24 clips.", "Altogether she sold 48 + 24 = 72 clips.", "The answer is \\boxed{72}."],
    ),
    ("What is 2 + 3?", ["2 + 3 = 5, so the answer is \\boxed{5}."]),
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
        "How much did she earn?",
        ["She earns 12 / 60 = $0.2 per minute.", "For 50 minutes she earned 0.2 * 50 = $10."],
    ),
]


def save_tiny_prm(folder, seed: int = 0, **overrides):
    """Save a random Qwen2 backbone plus a random score head as a Qwen2ForProcessRewardModel folder.

    Returns the folder, the torch backbone and the head weights as numpy arrays.
    """
    torch.manual_seed(seed)
    config = tiny_hf_config("qwen2", **overrides)
    backbone = transformers.Qwen2Model(config).float().eval()
    with torch.no_grad():  # random biases and norms, so a wrongly mapped one changes the output
        for name, param in backbone.named_parameters():
            if name.endswith(("bias", "norm.weight", "layernorm.weight")):
                param.add_(0.1 * torch.randn_like(param))
    e = config.hidden_size
    head = {
        "score.0.weight": torch.randn(e, e) / e**0.5,
        "score.0.bias": 0.1 * torch.randn(e),
        "score.2.weight": 0.5 * torch.randn(2, e),
        "score.2.bias": 0.1 * torch.randn(2),
    }
    tensors = {f"model.{name}": value.contiguous() for name, value in backbone.state_dict().items()}
    tensors.update(head)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf_config = config.to_dict()
    hf_config.update(architectures=["Qwen2ForProcessRewardModel"], num_labels=2)
    (folder / "config.json").write_text(json.dumps(hf_config))
    return folder, backbone, {name: value.numpy() for name, value in head.items()}


def numpy_head(hidden: np.ndarray, head: dict[str, np.ndarray]) -> np.ndarray:
    inner = np.maximum(hidden @ head["score.0.weight"].T + head["score.0.bias"], 0.0)
    return inner @ head["score.2.weight"].T + head["score.2.bias"]


@pytest.fixture(scope="module")
def smollm2_tokenizer_with_separator(model_cache):
    """The real SmolLM2 tokenizer with `<extra_0>` added as a special token (id 49152)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(resolve_folder(SMOLLM2, model_cache)))
    tokenizer.add_special_tokens({"additional_special_tokens": [STEP_SEPARATOR]})
    return tokenizer


@pytest.fixture(scope="module")
def tiny_prm_large_vocab(tmp_path_factory, smollm2_tokenizer_with_separator):
    """A random tiny PRM whose vocabulary covers the SmolLM2 tokenizer plus `<extra_0>`."""
    vocab_size = len(smollm2_tokenizer_with_separator)
    folder, _, _ = save_tiny_prm(tmp_path_factory.mktemp("prm") / "hf", seed=1, vocab_size=vocab_size)
    return load_model(str(folder), with_tokenizer=False)


def test_prm_loads_as_reward_model(tmp_path):
    folder, _, _ = save_tiny_prm(tmp_path / "hf")
    loaded = load_model(str(folder), with_tokenizer=False)
    assert isinstance(loaded.model, ProcessRewardModel)
    assert loaded.config.num_labels == 2
    assert loaded.config.architecture == "Qwen2ForProcessRewardModel"


def test_prm_head_matches_numpy(tmp_path):
    folder, backbone, head = save_tiny_prm(tmp_path / "hf")
    loaded = load_model(str(folder), with_tokenizer=False)
    ours = np.asarray(loaded.model(jnp.asarray(TOKENS), jnp.ones(TOKENS.shape, bool)))
    with torch.no_grad():
        hidden = backbone(torch.tensor(TOKENS, dtype=torch.long)).last_hidden_state.numpy()
    expected = numpy_head(hidden.astype(np.float64), {k: v.astype(np.float64) for k, v in head.items()})
    assert ours.shape == (2, 8, 2)
    assert np.max(np.abs(ours - expected)) <= 1e-4


def test_score_steps_counts_and_range(tiny_prm_large_vocab, smollm2_tokenizer_with_separator):
    rewards = score_steps(tiny_prm_large_vocab.model, smollm2_tokenizer_with_separator, ITEMS)
    assert [len(r) for r in rewards] == [len(steps) for _, steps in ITEMS]
    flat = np.array([value for row in rewards for value in row])
    assert np.all(flat > 0.0)
    assert np.all(flat < 1.0)
    assert np.ptp(flat) > 1e-3  # the random head gives the steps different rewards, so the comparison below can fail


def test_score_steps_batch_equals_single(tiny_prm_large_vocab, smollm2_tokenizer_with_separator):
    tokenizer = smollm2_tokenizer_with_separator
    separator_id = tokenizer.convert_tokens_to_ids(STEP_SEPARATOR)
    batched = score_steps(tiny_prm_large_vocab.model, tokenizer, ITEMS)
    for (question, steps), batch_rewards in zip(ITEMS, batched, strict=True):
        messages = [
            {"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": "".join(step + STEP_SEPARATOR for step in steps)},
        ]
        ids = np.array([tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)], np.int32)
        logits = np.asarray(tiny_prm_large_vocab.model(jnp.asarray(ids), jnp.ones(ids.shape, bool)))[0]
        logits = logits.astype(np.float64)
        probabilities = np.exp(logits[:, 1]) / np.exp(logits).sum(-1)
        alone = probabilities[ids[0] == separator_id]
        assert len(alone) == len(steps)
        assert np.max(np.abs(np.array(batch_rewards) - alone)) <= 1e-5


def test_score_steps_empty_batch(tiny_prm_large_vocab, smollm2_tokenizer_with_separator):
    assert score_steps(tiny_prm_large_vocab.model, smollm2_tokenizer_with_separator, []) == []


def test_score_steps_rejects_tokenizer_without_separator(tiny_prm_large_vocab, model_cache):
    plain = transformers.AutoTokenizer.from_pretrained(str(resolve_folder(SMOLLM2, model_cache)))
    with pytest.raises(ValueError, match="no single token '<extra_0>'"):
        score_steps(tiny_prm_large_vocab.model, plain, ITEMS)


def test_score_steps_rejects_separator_in_step(tiny_prm_large_vocab, smollm2_tokenizer_with_separator):
    items = [("What is 1 + 1?", [f"1 + 1 = 2{STEP_SEPARATOR}", "The answer is 2."])]
    with pytest.raises(ValueError, match="item 0, step 0 contains the separator"):
        score_steps(tiny_prm_large_vocab.model, smollm2_tokenizer_with_separator, items)


def test_score_steps_rejects_foreign_tokenizer(tmp_path, smollm2_tokenizer_with_separator):
    folder, _, _ = save_tiny_prm(tmp_path / "hf")  # vocabulary of 128 tokens
    loaded = load_model(str(folder), with_tokenizer=False)
    with pytest.raises(ValueError, match="outside the model vocabulary of 128"):
        score_steps(loaded.model, smollm2_tokenizer_with_separator, ITEMS)
