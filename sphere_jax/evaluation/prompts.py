"""Build evaluation prompts from a config and render them with the model's chat template."""

from __future__ import annotations

import dataclasses
from typing import Any

from sphere_jax.data.problem import Problem

QUESTION_PLACEHOLDER = "{question}"
DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """The chat messages sent for each problem.

    Attributes:
        system: System message, or an empty string to send none (the chat template may then
            insert its own default system message, as SmolLM2's and Qwen2.5's do).
        user_template: User message; ``{question}`` is replaced by the problem text. Other braces
            are kept as written, so ``\\boxed{}`` needs no escaping.
    """

    system: str = DEFAULT_SYSTEM_PROMPT
    user_template: str = QUESTION_PLACEHOLDER

    def __post_init__(self) -> None:
        if QUESTION_PLACEHOLDER not in self.user_template:
            raise ValueError(
                f"user_template {self.user_template!r} has no {QUESTION_PLACEHOLDER} placeholder; "
                f"add it where the problem text goes."
            )

    def user_message(self, problem: Problem) -> str:
        """Return the user message for ``problem``."""
        return self.user_template.replace(QUESTION_PLACEHOLDER, problem.question)


def render_prompt(tokenizer: Any, system: str, user: str) -> str:
    """Render a system and a user message with the tokenizer's chat template.

    Args:
        tokenizer: A ``transformers`` tokenizer with a chat template.
        system: System message; an empty string sends none.
        user: User message.

    Returns:
        The prompt text, ending with the assistant turn's opening (``add_generation_prompt=True``).

    Raises:
        ValueError: If the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"Tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '')!r}) has no chat "
            f"template; load the instruct model's tokenizer, or set tokenizer.chat_template."
        )
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def build_prompt(tokenizer: Any, config: PromptConfig, problem: Problem) -> str:
    """Render the prompt for one problem."""
    return render_prompt(tokenizer, config.system, config.user_message(problem))
