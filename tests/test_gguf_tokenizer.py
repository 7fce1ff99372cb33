"""The torch-free GGUF tokenizer encodes, decodes and renders chat exactly as transformers' GGUF loader.

transformers reads GGUF metadata with a module that imports torch. sphere_jax reads the same
metadata with the `gguf` package, so an install without torch still converts the packaged models. The reference here is transformers' own `AutoTokenizer(..., gguf_file=...)`,
which the test extra can run because it installs torch.
"""

from __future__ import annotations

import pytest

from sphere_jax.weights.gguf_tokenizer import gguf_tokenizer
from sphere_jax.weights.packaged import packaged_gguf

TEXTS = [
    "Natalia sold clips to 48 of her friends in April.\n\nStep 1: 48 / 2 = 24.\n\n\\boxed{72}",
    "  leading spaces\tand tabs\n\n\n",
    "accents é, emoji 🤖 and 中文",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>x $1,000.50",
]
MESSAGES = [
    {"role": "system", "content": "Solve step by step."},
    {"role": "user", "content": "What is 2 + 3?"},
]


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_gguf_tokenizer_matches_transformers(name, model_cache, tmp_path):
    from transformers import AutoTokenizer

    path = packaged_gguf(name, model_cache)
    # Through a save and reload, as the converted model folder stores it.
    gguf_tokenizer(path).save_pretrained(str(tmp_path))
    ours = AutoTokenizer.from_pretrained(str(tmp_path))
    reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)

    assert len(ours) == len(reference)
    assert (ours.eos_token_id, ours.bos_token_id, ours.pad_token_id) == (
        reference.eos_token_id,
        reference.bos_token_id,
        reference.pad_token_id,
    )
    for text in TEXTS:
        for special in (True, False):
            ids = ours(text, add_special_tokens=special)["input_ids"]
            assert ids == reference(text, add_special_tokens=special)["input_ids"], (text, special)
        assert ours.decode(ids) == reference.decode(ids)
    rendered = ours.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == reference.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert "What is 2 + 3?" in rendered
