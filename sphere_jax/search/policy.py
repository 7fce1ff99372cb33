"""The policy as the search sees it: chat rendering, candidate steps, rollouts and yes/no scores.

`SamplerPolicy` serves these with the KV-cached sampler. Tests substitute a scripted policy with
the same methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from sphere_jax.sampling.params import SamplingParams
from sphere_jax.sampling.sampler import Sampler, SamplerConfig


@dataclasses.dataclass(frozen=True)
class StepRequest:
    """Sample `n` next steps after `prompt` (chat prompt plus the steps so far)."""

    prompt: str
    n: int
    seed: int


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One sampled step or rollout: its text (a step's without the delimiter) and whether the model ended there (EOS)."""

    text: str
    ended: bool
    num_tokens: int


class StepPolicy(Protocol):
    name: str
    tokens_generated: int

    def render(self, user: str, system: str | None) -> str:
        """Return the chat-rendered prompt, ready for the assistant's answer."""
        ...

    def propose(self, requests: Sequence[StepRequest]) -> list[list[Candidate]]:
        """Return n candidate steps per request."""
        ...

    def complete(self, prompts: Sequence[str], *, n: int, seed: int, max_tokens: int) -> list[list[Candidate]]:
        """Return n full continuations per prompt (for rollouts); `ended` is false for one cut at max_tokens."""
        ...

    def yes_probability(self, prompts: Sequence[str]) -> list[float]:
        """Return P(Yes) / (P(Yes) + P(No)) for the next token after each prompt."""
        ...


class SamplerPolicy:
    """A `StepPolicy` backed by a model, its tokenizer and a `Sampler` that stops at the delimiter."""

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: Any,
        *,
        step_delimiter: str,
        temperature: float,
        top_p: float,
        max_step_tokens: int,
        sampler_config: SamplerConfig = SamplerConfig(),
    ):
        self.name = name
        self.tokenizer = tokenizer
        self.sampler = Sampler(model, tokenizer, stop_strings=(step_delimiter,), config=sampler_config)
        self.temperature = temperature
        self.top_p = top_p
        self.max_step_tokens = max_step_tokens
        self.tokens_generated = 0
        self._yes_no_ids = _yes_no_token_ids(tokenizer)

    def render(self, user: str, system: str | None) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def propose(self, requests: Sequence[StepRequest]) -> list[list[Candidate]]:
        params = [
            SamplingParams(
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=self.max_step_tokens,
                n=request.n,
                seed=request.seed,
            )
            for request in requests
        ]
        outputs = self.sampler.generate([r.prompt for r in requests], params)
        candidates = []
        for samples in outputs:
            row = []
            for c in samples:
                self.tokens_generated += len(c.token_ids)
                row.append(Candidate(text=c.text.strip(), ended=c.finish_reason == "eos", num_tokens=len(c.token_ids)))
            candidates.append(row)
        return candidates

    def complete(self, prompts: Sequence[str], *, n: int, seed: int, max_tokens: int) -> list[list[Candidate]]:
        params = [
            SamplingParams(
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=max_tokens,
                n=n,
                seed=seed + 1000 * i,
                stop_at_strings=False,
            )
            for i in range(len(prompts))
        ]
        outputs = self.sampler.generate(list(prompts), params)
        continuations = []
        for samples in outputs:
            self.tokens_generated += sum(len(c.token_ids) for c in samples)
            continuations.append(
                [Candidate(text=c.text, ended=c.finish_reason == "eos", num_tokens=len(c.token_ids)) for c in samples]
            )
        return continuations

    def yes_probability(self, prompts: Sequence[str]) -> list[float]:
        yes_ids, no_ids = self._yes_no_ids
        logprobs = self.sampler.next_token_logprobs(list(prompts), list(yes_ids) + list(no_ids))
        probs = np.exp(logprobs)
        yes = probs[:, : len(yes_ids)].sum(-1)
        no = probs[:, len(yes_ids) :].sum(-1)
        return (yes / np.maximum(yes + no, 1e-30)).tolist()


def _yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids that start an answer "Yes" or "No", with and without a leading space."""

    def ids(words: Sequence[str]) -> list[int]:
        found = set()
        for word in words:
            encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
            if encoded:
                found.add(encoded[0])
        return sorted(found)

    return ids(["Yes", " Yes", "yes"]), ids(["No", " No", "no"])
