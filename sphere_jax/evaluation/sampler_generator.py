"""Adapt the KV-cached `Sampler` to the evaluation harness's `Generator` protocol."""

from __future__ import annotations

from sphere_jax.evaluation.generator import GeneratedText
from sphere_jax.sampling.params import SamplingParams
from sphere_jax.sampling.sampler import Sampler


class SamplerGenerator:
    """Serve `Generator.generate` calls with a `Sampler`; prompts are chat-rendered text."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def generate(
        self, prompts: list[str], *, n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[GeneratedText]]:
        params = SamplingParams(
            temperature=temperature, max_new_tokens=max_new_tokens, n=n, seed=seed, stop_at_strings=False
        )
        outputs = self.sampler.generate(prompts, params)
        return [
            [
                GeneratedText(
                    text=c.text,
                    num_tokens=len(c.token_ids),
                    finish_reason="length" if c.finish_reason == "length" else "stop",
                )
                for c in samples
            ]
            for samples in outputs
        ]
