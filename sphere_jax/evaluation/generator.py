"""The interface between the evaluation harness and a text sampler."""

from __future__ import annotations

import dataclasses
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class GeneratedText:
    """One sampled completion.

    Attributes:
        text: The completion without the prompt and without the end-of-sequence token.
        num_tokens: Number of generated tokens, the end-of-sequence token included if sampled.
        finish_reason: ``"stop"`` if an end-of-sequence token ended the completion, ``"length"``
            if ``max_new_tokens`` cut it off.
    """

    text: str
    num_tokens: int
    finish_reason: str = "stop"


class Generator(Protocol):
    """A sampler that completes chat-rendered prompts."""

    def generate(
        self, prompts: list[str], *, n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[GeneratedText]]:
        """Sample ``n`` completions for each prompt.

        Args:
            prompts: Prompts already rendered with the model's chat template, special tokens included.
            n: Completions per prompt.
            temperature: Softmax temperature; 0 means greedy decoding (argmax at every step).
            max_new_tokens: Maximum number of generated tokens per completion.
            seed: Seed of the random draws; equal seeds and inputs give equal completions.

        Returns:
            ``len(prompts)`` lists of ``n`` completions, in prompt order.
        """
        ...
