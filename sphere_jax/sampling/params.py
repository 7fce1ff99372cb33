"""Per-request sampling settings and their validation."""

from __future__ import annotations

import dataclasses


class SamplingError(ValueError):
    """A sampling request that cannot run; raised before any device work."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample one prompt. Every field is a per-row array inside the compiled loop, so
    changing any of them never recompiles.

    Attributes:
        temperature: 0 is greedy; otherwise logits are divided by it before sampling.
        top_k: keep the k most likely tokens (0 keeps all). Applied before top_p.
        top_p: keep the smallest set of tokens whose probability reaches top_p (1 keeps all).
        max_new_tokens: maximum tokens generated for this prompt.
        n: samples of this prompt; they share one prefill (prefix fan-out).
        seed: sample j of this request draws from PRNG key `seed + j`, so a request with
            n samples equals n single-sample requests with seeds seed, seed + 1, ...
        stop_at_strings: whether the sampler's stop strings end this request's rows.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 256
    n: int = 1
    seed: int = 0
    stop_at_strings: bool = True

    def validate(self, vocab_size: int, max_top_k: int) -> None:
        if self.temperature < 0:
            raise SamplingError(f"temperature={self.temperature} is negative; use 0 for greedy or a positive value")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p={self.top_p} is outside (0, 1]; use 1.0 to disable nucleus sampling")
        if self.top_k < 0:
            raise SamplingError(f"top_k={self.top_k} is negative; use 0 to disable top-k")
        if self.top_k > vocab_size:
            raise SamplingError(f"top_k={self.top_k} is larger than the vocabulary ({vocab_size} tokens)")
        if self.top_k > max_top_k:
            raise SamplingError(
                f"top_k={self.top_k} exceeds the sampler's max_top_k={max_top_k}; raise max_top_k or use 0"
            )
        if self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.n < 1:
            raise SamplingError(f"n={self.n} must be at least 1")
