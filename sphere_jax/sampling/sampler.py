"""Jitted KV-cached sampler: bucketed prefill, prefix fan-out, and a while_loop decode.

Shapes are padded up to a small fixed set of buckets (prompt length, rows, new tokens), so a
stream of requests compiles at most once per bucket combination; `compile_count` counts traces.
Model weights are arguments of the compiled functions, not constants, so one compilation serves
the policy after every DPO update (`update_model`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sphere_jax.models.transformer import (
    DecodeWeights,
    KVCache,
    Transformer,
    cached_hidden_states,
    decode_logits,
    init_cache,
    positions_from_mask,
)
from sphere_jax.sampling import stops
from sphere_jax.sampling.filters import sample_tokens
from sphere_jax.sampling.params import SamplingError, SamplingParams
from sphere_jax.sampling.prefill_plan import plan_prefill_tiers
from sphere_jax.sampling.prefix_groups import PrefixGroup, group_by_shared_prefix

log = logging.getLogger(__name__)

RUNNING, EOS, STOP_STRING, LENGTH = 0, 1, 2, 3
FINISH_REASONS = {EOS: "eos", STOP_STRING: "stop", LENGTH: "length"}


@dataclasses.dataclass(frozen=True)
class Completion:
    """One sampled continuation.

    `token_ids` and `logprobs` cover every generated token, the final EOS or stop-string token
    included; `text` excludes an EOS token and is cut before the stop string.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]  # log p(token | prefix) at temperature 1, unfiltered, fp32
    finish_reason: str  # "eos", "stop" or "length"
    prompt_index: int
    sample_index: int


MATMUL_DTYPES = (None, "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Buckets and limits. Shapes round up to the next bucket; each combination compiles once."""

    max_cache_length: int = 4096  # prompt plus new tokens, per row
    # Fine steps at short lengths, where a prefill tier padded one coarse step too far costs most.
    prompt_buckets: tuple[int, ...] = (64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
    new_token_buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    max_top_k: int = 256  # candidates considered when top-k or top-p is on
    min_shared_prefix: int = 32  # prompts scored together share at least this many tokens to share a prefill
    # Dtype of the sampler's weight matrices and KV cache, with fp32 accumulation (None: the model's
    # compute dtype). bfloat16 samples 1.5x faster at batch 8 and 32 on an AVX512-BF16 CPU, but its
    # log-probs then differ from the fp32 trainer's by bf16 rounding (docs/benchmarks_sampler.md).
    matmul_dtype: str | None = None
    # Prefill prompts in tiers of similar length rather than all padded to the longest one
    # (`prefill_plan.py`). Each tier counts as this many token positions more than its padded size.
    prefill_tiers: bool = True
    prefill_call_cost: int = 64

    def __post_init__(self) -> None:
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise SamplingError(
                f"matmul_dtype={self.matmul_dtype!r} is not supported; use one of {', '.join(map(repr, MATMUL_DTYPES))}"
            )
        if self.prefill_call_cost < 0:
            raise SamplingError(f"prefill_call_cost={self.prefill_call_cost} is negative; use 0 or more")


def _bucket(value: int, buckets: Sequence[int], what: str) -> int:
    for bucket in buckets:
        if value <= bucket:
            return bucket
    raise SamplingError(f"{what}={value} exceeds the largest bucket {buckets[-1]}; add a larger bucket")


class Sampler:
    """Generate text from a decoder with per-row settings, stop strings and prefix fan-out.

    Args:
        model: the decoder; its weights can later be swapped with `update_model`.
        tokenizer: an HF tokenizer of the model.
        stop_strings: strings that end a row when the generated text completes them.
        mesh: optional device mesh; rows are split over its "data" and "fsdp" axes and weights
            placed by `sphere_jax.training.mesh` rules. Without a mesh everything runs on the
            default device.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        *,
        stop_strings: Sequence[str] = (),
        eos_token_ids: Sequence[int] | None = None,
        config: SamplerConfig = SamplerConfig(),
        mesh: Mesh | None = None,
    ):
        self.config = config
        self._matmul_dtype = None if config.matmul_dtype is None else jnp.dtype(config.matmul_dtype)
        self.tokenizer = tokenizer
        self.model_config = model.cfg
        self.vocab_size = model.cfg.vocab_size
        self.mesh = mesh
        self._row_devices = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        self.stop_strings = tuple(stop_strings)
        eos = set(eos_token_ids if eos_token_ids is not None else model.cfg.eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None and eos_token_ids is None:
            eos.add(int(tokenizer.eos_token_id))
        if not eos:
            raise SamplingError("no EOS token id: pass eos_token_ids or use a config that defines eos_token_id")
        self.eos_token_ids = tuple(sorted(eos))
        self.pad_id = int(model.cfg.pad_token_id if model.cfg.pad_token_id is not None else self.eos_token_ids[0])
        self.compile_count = 0
        self._graphdef = nnx.graphdef(model)
        self._weights = self._decode_weights(model)
        started = time.perf_counter()
        texts = stops.token_texts(tokenizer, self.vocab_size) if self.stop_strings else []
        tables, lengths = stops.stop_tables(texts, self.stop_strings) if self.stop_strings else (
            np.zeros((0, 1, self.vocab_size), np.int16),
            np.zeros((0,), np.int16),
        )
        self._stop_tables = jnp.asarray(tables)
        self._stop_lengths = jnp.asarray(lengths)
        if self.stop_strings:
            log.info("built stop-string tables for %s in %.2f s", self.stop_strings, time.perf_counter() - started)
        self._prefill = jax.jit(self._prefill_impl, static_argnames=("cache_length",))
        self._fan_out = jax.jit(self._fan_out_impl)
        self._empty = jax.jit(self._empty_impl, static_argnames=("rows", "cache_length"))
        self._place = jax.jit(self._place_impl, static_argnames=("offset",), donate_argnames=("cache", "logits"))
        self._extend = jax.jit(self._extend_impl, static_argnames=("offset",), donate_argnames=("cache",))
        self._decode = jax.jit(self._decode_impl, static_argnames=("prompt_slots", "steps"), donate_argnames=("cache",))

    # ------------------------------------------------------------------------------------
    # Weights and placement

    def update_model(self, model: Transformer) -> None:
        """Serve new weights of the same architecture without recompiling."""
        if nnx.graphdef(model) != self._graphdef:
            raise SamplingError("update_model needs a model of the same structure as the sampler's")
        self._weights = None  # free the old copy before making the new one
        self._weights = self._decode_weights(model)

    def release_weights(self) -> None:
        """Free the sampler's copy of the weights (for example while training); `update_model` restores one."""
        self._weights = None

    def _require_weights(self) -> DecodeWeights:
        if self._weights is None:
            raise SamplingError("the sampler's weights were released; call update_model(model) before sampling")
        return self._weights

    def _decode_weights(self, model: Transformer) -> DecodeWeights:
        """Place the weights on the mesh, then copy them into the per-layer decoding layout."""
        if self.mesh is not None:
            from sphere_jax.models.sharding import shard_state

            graphdef, state = nnx.split(model)
            model = nnx.merge(graphdef, shard_state(state, self.mesh))
        return model.decode_weights(matmul_dtype=self._matmul_dtype)

    def _rows_sharding(self, ndim: int) -> NamedSharding | None:
        if self.mesh is None:
            return None
        spec = PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1)))
        return NamedSharding(self.mesh, spec)

    def _put_rows(self, array: np.ndarray) -> jax.Array:
        sharding = self._rows_sharding(array.ndim)
        return jnp.asarray(array) if sharding is None else jax.device_put(array, sharding)

    # ------------------------------------------------------------------------------------
    # Compiled parts

    def _prefill_impl(self, weights: DecodeWeights, tokens, valid, *, cache_length: int):
        """Prefill prompts [U, P]; return last-position logits [U, V] and a cache of cache_length."""
        self.compile_count += 1  # runs only while tracing
        cfg = self.model_config
        cache = init_cache(cfg, tokens.shape[0], cache_length, self._matmul_dtype)
        kv_valid = jnp.pad(valid, ((0, 0), (0, cache_length - tokens.shape[1])))
        hidden, cache = cached_hidden_states(
            cfg, weights, tokens, positions_from_mask(valid), kv_valid, cache, 0, self._matmul_dtype
        )
        return decode_logits(cfg, weights, hidden[:, -1], self._matmul_dtype), cache

    def _empty_impl(self, *, rows: int, cache_length: int):
        """Return a zeroed cache [rows, ..., cache_length, ...] and logits [rows, V] for tiers to fill."""
        self.compile_count += 1
        cache = init_cache(self.model_config, rows, cache_length, self._matmul_dtype)
        return cache, jnp.zeros((rows, self.vocab_size), jnp.float32)

    def _place_impl(self, cache: KVCache, logits, tier_cache: KVCache, tier_logits, rows, *, offset: int):
        """Write a tier's cache [R, ..., P, ...] into `cache` rows `rows` [R], slots [offset, offset + P).

        Padding rows of the tier carry an out-of-range row index and are dropped.
        """
        self.compile_count += 1
        placed = cache.write(tier_cache, rows, offset)
        return placed, logits.at[rows].set(tier_logits, mode="drop")

    def _fan_out_impl(self, cache: KVCache, logits, valid, row_to_prompt):
        """Copy each prompt's cache, logits and mask into the rows that sample it."""
        self.compile_count += 1
        return (
            cache.take_rows(row_to_prompt),
            jnp.take(logits, row_to_prompt, axis=0),
            jnp.take(valid, row_to_prompt, axis=0),
        )

    def _extend_impl(self, weights: DecodeWeights, cache: KVCache, tokens, positions, kv_valid, *, offset: int):
        """Run tokens [B, T] on a cache filled up to slot `offset`; return last-position logits [B, V].

        The cache is donated and returned, so XLA writes the new keys and values in place.
        """
        self.compile_count += 1
        cfg = self.model_config
        hidden, cache = cached_hidden_states(cfg, weights, tokens, positions, kv_valid, cache, offset, self._matmul_dtype)
        return decode_logits(cfg, weights, hidden[:, -1], self._matmul_dtype), cache

    def _decode_impl(
        self,
        weights: DecodeWeights,
        cache: KVCache,
        logits,  # [B, V] fp32, next-token logits after the prompt
        prompt_valid,  # [B, P] bool
        temperature,  # [B]
        top_k,  # [B]
        top_p,  # [B]
        keys,  # [B] PRNG keys
        max_new_tokens,  # [B] int32; 0 marks a padding row
        use_stops,  # [B] bool: whether stop strings end this row
        *,
        prompt_slots: int,
        steps: int,
    ):
        self.compile_count += 1
        cfg = self.model_config
        batch = logits.shape[0]
        eos_ids = jnp.asarray(self.eos_token_ids, jnp.int32)
        stop_tables, stop_lengths = self._stop_tables, self._stop_lengths
        prompt_lengths = prompt_valid.sum(axis=1).astype(jnp.int32)
        kv_valid = jnp.pad(prompt_valid, ((0, 0), (0, cache.length - prompt_slots)))

        def pick(carry, logits):
            """Choose every row's token `step` from its logits [B, V]; record it and any stop."""
            step = carry["step"]
            uniform = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, step)))(keys)
            token = sample_tokens(logits, temperature, top_k, top_p, uniform, self.config.max_top_k)
            logprob = jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(logits, axis=-1)
            active = ~carry["done"]
            token = jnp.where(active, token, self.pad_id)
            is_eos = jnp.isin(token, eos_ids)
            stop_state = stop_tables[jnp.arange(stop_tables.shape[0])[None, :], carry["stop_state"], token[:, None]]
            hit_stop = jnp.any(stop_state == stop_lengths[None, :], axis=-1) & use_stops
            hit_length = step + 1 >= max_new_tokens
            finished = active & (is_eos | hit_stop | hit_length)
            reason = jnp.where(is_eos, EOS, jnp.where(hit_stop, STOP_STRING, LENGTH))
            return {
                **carry,
                "step": step + 1,
                "done": carry["done"] | finished,
                "reason": jnp.where(finished, reason, carry["reason"]),
                "length": jnp.where(finished, step + 1, carry["length"]),
                "tokens": carry["tokens"].at[:, step].set(token),
                "logprobs": carry["logprobs"].at[:, step].set(jnp.where(active, logprob, 0.0)),
                "stop_state": stop_state,
            }

        def cond(carry):
            return (carry["step"] < steps) & ~jnp.all(carry["done"])

        def body(carry):
            # Feed the last chosen token, then choose the next, so the loop ends before a forward
            # whose logits would go unread. A `lax.cond` around the forward would do the same, but
            # its branches pass the cache through, and XLA on CPU then copies it at every step.
            fed = carry["step"] - 1
            token = carry["tokens"][:, fed]
            kv = carry["kv_valid"].at[:, prompt_slots + fed].set(True)
            positions = (prompt_lengths + fed)[:, None]
            hidden, cache = cached_hidden_states(
                cfg, weights, token[:, None], positions, kv, carry["cache"], prompt_slots + fed, self._matmul_dtype
            )
            logits = decode_logits(cfg, weights, hidden[:, 0], self._matmul_dtype)
            return pick({**carry, "cache": cache, "kv_valid": kv}, logits)

        carry = {
            "step": jnp.int32(0),
            "cache": cache,
            "kv_valid": kv_valid,
            "done": max_new_tokens <= 0,
            "reason": jnp.zeros((batch,), jnp.int32),
            "length": jnp.zeros((batch,), jnp.int32),
            "tokens": jnp.full((batch, steps), self.pad_id, jnp.int32),
            "logprobs": jnp.zeros((batch, steps), jnp.float32),
            "stop_state": jnp.zeros((batch, stop_tables.shape[0]), jnp.int16),
        }
        carry = pick(carry, logits)
        out = jax.lax.while_loop(cond, body, carry)
        # Returning the cache lets XLA run the loop in the donated input buffer.
        return out["tokens"], out["logprobs"], out["length"], out["reason"], out["cache"]

    # ------------------------------------------------------------------------------------
    # Host side

    def _encode(self, prompt: str | Sequence[int], index: int) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise SamplingError(f"prompt {index} is empty")
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise SamplingError(f"prompt {index} is empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise SamplingError(f"prompt {index} has token ids outside [0, {self.vocab_size}): {bad[:5]}")
        return ids

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
        *,
        include_stop_string: bool = False,
    ) -> list[list[Completion]]:
        """Sample `params.n` completions of every prompt; return them grouped by prompt.

        Prompts are text (tokenized without special tokens, so render chat templates first) or
        token ids. All inputs are checked before any device work.
        """
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise SamplingError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        if not prompts:
            return []
        encoded = [self._encode(p, i) for i, p in enumerate(prompts)]
        for index, (ids, setting) in enumerate(zip(encoded, params)):
            setting.validate(self.vocab_size, self.config.max_top_k)
            if len(ids) + setting.max_new_tokens > self.config.max_cache_length:
                raise SamplingError(
                    f"prompt {index} has {len(ids)} tokens and asks for {setting.max_new_tokens} new ones, more "
                    f"than max_cache_length={self.config.max_cache_length}; shorten it or raise max_cache_length"
                )
            _bucket(len(ids), self.config.prompt_buckets, f"prompt {index} length")
            _bucket(setting.max_new_tokens, self.config.new_token_buckets, f"prompt {index} max_new_tokens")

        results: list[list[Completion | None]] = [[None] * p.n for p in params]
        for group in self._groups(encoded, params):
            for completion in self._run_group(group, encoded, params, include_stop_string):
                results[completion.prompt_index][completion.sample_index] = completion
        return [[c for c in row if c is not None] for row in results]

    def next_token_logprobs(
        self,
        prompts: Sequence[str | Sequence[int]],
        token_ids: Sequence[int],
        *,
        share_prefixes: bool = True,
    ) -> np.ndarray:
        """Return log p(token | prompt) [len(prompts), len(token_ids)] for the token after each prompt.

        No decoding: this is how a verifier prompt scores "Yes". Prompts that start with the same
        tokens (the E candidates of one search node under one verification prompt) are grouped,
        and each group's common start is prefilled once; then only the rest of each prompt is run
        on a copy of that cache. `share_prefixes=False` prefills every prompt whole.
        """
        encoded = [self._encode(p, i) for i, p in enumerate(prompts)]
        for index, ids in enumerate(encoded):
            _bucket(len(ids), self.config.prompt_buckets, f"prompt {index} length")
        selected = np.asarray(token_ids, np.int64)
        results = np.zeros((len(encoded), len(selected)), np.float32)
        limit = self.config.batch_buckets[-1]
        if share_prefixes:
            groups = group_by_shared_prefix(
                encoded,
                min_shared=self.config.min_shared_prefix,
                max_members=limit,
                max_rest=self.config.new_token_buckets[-1],
            )
        else:
            groups = [PrefixGroup((i,), 0) for i in range(len(encoded))]
        whole = sorted((g.members[0] for g in groups if g.shared == 0), key=lambda i: len(encoded[i]))
        for start in range(0, len(whole), limit):
            chunk = whole[start : start + limit]
            results[chunk] = _select_logprobs(self._prefill_whole([encoded[i] for i in chunk]), selected)

        def score_shared(batch: list[PrefixGroup]) -> None:
            rows = [i for g in batch for i in g.members]
            results[rows] = _select_logprobs(self._prefill_shared(batch, encoded), selected)

        batch: list[PrefixGroup] = []
        batch_rows = 0
        for group in sorted((g for g in groups if g.shared > 0), key=lambda g: g.shared):
            if batch and batch_rows + len(group.members) > limit:
                score_shared(batch)
                batch, batch_rows = [], 0
            batch.append(group)
            batch_rows += len(group.members)
        if batch:
            score_shared(batch)
        return results

    def _prefill_whole(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Prefill each sequence whole; return last-position logits [len(sequences), V] fp32."""
        prompt_slots = _bucket(max(len(ids) for ids in sequences), self.config.prompt_buckets, "prompt length")
        rows = _bucket(len(sequences), self.config.batch_buckets, "prompts per batch")
        tokens, valid = _left_padded(sequences, rows, prompt_slots, self.pad_id)
        logits, _ = self._prefill(
            self._require_weights(), self._put_rows(tokens), self._put_rows(valid), cache_length=prompt_slots
        )
        return np.asarray(jax.device_get(logits))[: len(sequences)]

    def _prefill_shared(self, groups: Sequence[PrefixGroup], encoded: Sequence[Sequence[int]]) -> np.ndarray:
        """Prefill each group's shared start once, then every member's rest on a copy of its cache.

        Returns last-position logits [members, V] fp32, members in group order.
        """
        cfg = self.config
        heads = [encoded[g.members[0]][: g.shared] for g in groups]
        rests = [encoded[i][g.shared :] for g in groups for i in g.members]
        prefix_slots = _bucket(max(len(h) for h in heads), cfg.prompt_buckets, "shared prompt start")
        rest_slots = _bucket(max(len(r) for r in rests), cfg.new_token_buckets, "prompt rest after the shared start")
        prefix_rows = _bucket(len(heads), cfg.batch_buckets, "prompt groups per batch")
        rows = _bucket(len(rests), cfg.batch_buckets, "prompts per batch")

        head_tokens, head_valid = _left_padded(heads, prefix_rows, prefix_slots, self.pad_id)
        row_to_group = np.zeros((rows,), np.int32)
        row_to_group[: len(rests)] = [slot for slot, g in enumerate(groups) for _ in g.members]
        rest_tokens, rest_valid = _left_padded(rests, rows, rest_slots, self.pad_id)
        # Each row's cache has its shared start in slots [0, prefix_slots) and its rest after them, both left padded.
        kv_valid = np.concatenate([head_valid[row_to_group], rest_valid], axis=1)
        positions = np.maximum(np.cumsum(kv_valid, axis=1) - 1, 0)[:, prefix_slots:].astype(np.int32)

        weights = self._require_weights()
        logits, cache = self._prefill(
            weights, self._put_rows(head_tokens), self._put_rows(head_valid), cache_length=prefix_slots + rest_slots
        )
        cache, _, _ = self._fan_out(cache, logits, self._put_rows(head_valid), self._put_rows(row_to_group))
        logits, _ = self._extend(
            weights,
            cache,
            self._put_rows(rest_tokens),
            self._put_rows(positions),
            self._put_rows(kv_valid),
            offset=prefix_slots,
        )
        return np.asarray(jax.device_get(logits))[: len(rests)]

    def _prefill_prompts(self, sequences, tokens, valid, cache_length: int) -> tuple[jax.Array, KVCache]:
        """Prefill left-padded prompts tokens [U, P]; return last-position logits [U, V] and a cache.

        With `prefill_tiers`, prompts of similar length are prefilled together, each tier padded
        only to its own bucket. Each tier's cache is placed at the end of its rows' P prompt
        slots, which gives the same cache as one prefill of all rows for less padded work.
        """
        cfg = self.config
        weights = self._require_weights()
        prompt_slots = tokens.shape[1]
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        # Under a mesh a tier's rows must split evenly over the devices that hold rows.
        row_buckets = [b for b in cfg.batch_buckets if b % self._row_devices == 0]
        tiers = []
        if cfg.prefill_tiers and len(sequences) > 1 and row_buckets:
            tiers = plan_prefill_tiers(
                [len(sequences[i]) for i in order],
                [b for b in cfg.prompt_buckets if b <= prompt_slots],
                row_buckets,
                call_cost=cfg.prefill_call_cost,
            )
        if len(tiers) <= 1:
            return self._prefill(weights, self._put_rows(tokens), self._put_rows(valid), cache_length=cache_length)
        log.debug("prefill in %d tiers: %s", len(tiers), [(t.stop - t.start, t.slots) for t in tiers])
        cache, logits = self._empty(rows=tokens.shape[0], cache_length=cache_length)
        for tier in tiers:
            members = order[tier.start : tier.stop]
            tier_tokens, tier_valid = _left_padded([sequences[i] for i in members], tier.rows, tier.slots, self.pad_id)
            rows = np.full((tier.rows,), tokens.shape[0], np.int32)  # out of range: dropped
            rows[: len(members)] = members
            tier_logits, tier_cache = self._prefill(
                weights, self._put_rows(tier_tokens), self._put_rows(tier_valid), cache_length=tier.slots
            )
            cache, logits = self._place(
                cache, logits, tier_cache, tier_logits, self._put_rows(rows), offset=prompt_slots - tier.slots
            )
        return logits, cache

    def _groups(self, encoded, params) -> list[list[tuple[int, int]]]:
        """Split (prompt, sample) rows into batches of at most the largest batch bucket.

        Rows are ordered by prompt length so one batch pads little; a prompt's samples stay
        together where they fit, so its prefill is shared.
        """
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        limit = self.config.batch_buckets[-1]
        groups, current = [], []
        for prompt_index in order:
            for sample_index in range(params[prompt_index].n):
                if len(current) == limit:
                    groups.append(current)
                    current = []
                current.append((prompt_index, sample_index))
        if current:
            groups.append(current)
        return groups

    def _run_group(self, rows, encoded, params, include_stop_string) -> list[Completion]:
        cfg = self.config
        prompt_ids = sorted({p for p, _ in rows})
        longest = max(len(encoded[p]) for p in prompt_ids)
        prompt_slots = _bucket(longest, cfg.prompt_buckets, "prompt length")
        steps = _bucket(max(params[p].max_new_tokens for p in prompt_ids), cfg.new_token_buckets, "max_new_tokens")
        cache_length = prompt_slots + steps
        unique_rows = _bucket(len(prompt_ids), cfg.batch_buckets, "prompts per batch")
        batch = _bucket(len(rows), cfg.batch_buckets, "rows per batch")

        sequences = [encoded[p] for p in prompt_ids]
        tokens, valid = _left_padded(sequences, unique_rows, prompt_slots, self.pad_id)
        slot_of = {p: slot for slot, p in enumerate(prompt_ids)}
        logits, cache = self._prefill_prompts(sequences, tokens, valid, cache_length)

        row_to_prompt = np.zeros((batch,), np.int32)
        temperature = np.zeros((batch,), np.float32)
        top_k = np.zeros((batch,), np.int32)
        top_p = np.ones((batch,), np.float32)
        max_new = np.zeros((batch,), np.int32)
        seeds = np.zeros((batch,), np.uint32)
        use_stops = np.zeros((batch,), bool)
        for row, (p, s) in enumerate(rows):
            setting = params[p]
            row_to_prompt[row] = slot_of[p]
            temperature[row] = setting.temperature
            top_k[row] = setting.top_k
            top_p[row] = setting.top_p
            max_new[row] = setting.max_new_tokens
            seeds[row] = (setting.seed + s) % (2**32)
            use_stops[row] = setting.stop_at_strings

        cache, logits, row_valid = self._fan_out(cache, logits, self._put_rows(valid), self._put_rows(row_to_prompt))
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
        out_tokens, out_logprobs, lengths, reasons, _ = self._decode(
            self._require_weights(),
            cache,
            logits,
            row_valid,
            self._put_rows(temperature),
            self._put_rows(top_k),
            self._put_rows(top_p),
            keys,
            self._put_rows(max_new),
            self._put_rows(use_stops),
            prompt_slots=prompt_slots,
            steps=steps,
        )
        out_tokens, out_logprobs, lengths, reasons = jax.device_get((out_tokens, out_logprobs, lengths, reasons))

        completions = []
        for row, (p, s) in enumerate(rows):
            length = int(lengths[row])
            ids = out_tokens[row, :length].tolist()
            reason = int(reasons[row])
            text_ids = ids[:-1] if reason == EOS else ids
            text = self.tokenizer.decode(text_ids, skip_special_tokens=False) if self.tokenizer is not None else ""
            if reason == STOP_STRING:
                text = stops.cut_at_stop(text, self.stop_strings, keep_stop_string=include_stop_string)
            completions.append(
                Completion(
                    text=text,
                    token_ids=ids,
                    logprobs=out_logprobs[row, :length].tolist(),
                    finish_reason=FINISH_REASONS.get(reason, "length"),
                    prompt_index=p,
                    sample_index=s,
                )
            )
        return completions


def _left_padded(sequences: Sequence[Sequence[int]], rows: int, slots: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [rows, slots] with each sequence ending at the last slot, and their mask.

    Rows past the sequences attend to one padding token, so their softmax stays finite.
    """
    tokens = np.full((rows, slots), pad_id, np.int32)
    valid = np.zeros((rows, slots), bool)
    for row, ids in enumerate(sequences):
        tokens[row, slots - len(ids) :] = ids
        valid[row, slots - len(ids) :] = True
    valid[len(sequences) :, -1] = True
    return tokens, valid


def _select_logprobs(logits: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """Log-softmax of logits [N, V] in fp64, at the columns `selected`: [N, len(selected)]."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    log_normalizer = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=-1))
    return logits[:, selected] - log_normalizer[:, None]
