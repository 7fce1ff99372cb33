"""Typed settings of the pruned search and the SPHERE data generator."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

REWARD_BACKENDS = ("prm", "rollout", "self_judge")
INVERTED_POLICIES = ("swap", "drop")


def fill_template(template: str, **values: str) -> str:
    """Replace {name} placeholders; other braces (LaTeX such as \\boxed{}) stay as they are."""
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in values))
    return pattern.sub(lambda match: values[match.group(0)[1:-1]], template)


def builtin_prompt(name: str) -> str:
    """Return the text of a prompt file shipped in `sphere_jax/prompts/`."""
    return resources.files("sphere_jax").joinpath("prompts", name).read_text().strip("\n")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """Prompt texts; a value starting with "file:" is read from that path.

    `correction_user` takes {question} and {attempt}; `judge_user` takes {question} and {steps}.
    """

    solve_system: str = "builtin:solve_system.txt"
    correction_user: str = "builtin:correct_user.txt"
    judge_user: str = "builtin:judge_user.txt"

    def text(self, field: str) -> str:
        value = getattr(self, field)
        if value.startswith("builtin:"):
            return builtin_prompt(value.removeprefix("builtin:"))
        if value.startswith("file:"):
            path = Path(value.removeprefix("file:"))
            if not path.is_file():
                raise FileNotFoundError(f"prompt file {path} for {field} not found")
            return path.read_text().strip("\n")
        return value


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The pruned search: E candidates per step, keep the best and the worst.

    Attributes:
        candidates: E, candidate steps sampled per expansion (Stage 3 uses 2E).
        temperature: sampling temperature of candidate steps.
        top_p: nucleus sampling of candidate steps (1.0 disables it).
        max_depth: maximum steps per chain; a chain still open there ends unanswered.
        max_step_tokens: maximum tokens per step.
        step_delimiter: text between steps; sampling of a step stops when it appears.
        answer_pattern: regular expression that marks a final step besides a \\boxed{} answer
            (empty: only \\boxed{}).
        answer_fallback: "none" reads a chain's answer only from \\boxed{}, "#### n", "the answer
            is" or "final answer:"; "last_number" then falls back to the last number in the chain,
            for small models that do not mark their answer.
    """

    candidates: int = 5
    temperature: float = 0.8
    top_p: float = 1.0
    max_depth: int = 12
    max_step_tokens: int = 256
    step_delimiter: str = "\n\n"
    answer_pattern: str = ""
    answer_fallback: str = "none"

    def __post_init__(self) -> None:
        if self.candidates < 2:
            raise ValueError(f"search.candidates={self.candidates}: need at least 2 to keep a best and a worst")
        if self.max_depth < 1 or self.max_step_tokens < 1:
            raise ValueError(
                f"search.max_depth={self.max_depth} and search.max_step_tokens={self.max_step_tokens} must be >= 1"
            )
        if not self.step_delimiter:
            raise ValueError("search.step_delimiter must not be empty")
        if self.answer_fallback not in ("none", "last_number"):
            raise ValueError(f"search.answer_fallback={self.answer_fallback!r} is not one of none, last_number")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Step reward backend.

    Attributes:
        backend: "prm" (process reward model), "rollout" (Monte-Carlo value from `rollouts`
            completions checked against the gold answer) or "self_judge" (the policy's own
            probability of "Yes" under a verification prompt).
        rollouts: completions per candidate step for "rollout".
        rollout_max_tokens: maximum tokens per rollout.
        prm_model: model source of the PRM for "prm".
    """

    backend: str = "rollout"
    rollouts: int = 4
    rollout_max_tokens: int = 512
    prm_model: str = ""

    def __post_init__(self) -> None:
        if self.backend not in REWARD_BACKENDS:
            raise ValueError(f"reward.backend={self.backend!r} is not one of {', '.join(REWARD_BACKENDS)}")
        if self.backend == "prm" and not self.prm_model:
            raise ValueError("reward.backend='prm' needs reward.prm_model (a model source)")
        if self.rollouts < 1:
            raise ValueError(f"reward.rollouts={self.rollouts} must be at least 1")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """One iteration of SPHERE data generation.

    Attributes:
        problems_per_batch: problems searched together; one sampler call serves all their open
            chains at a depth. Results are written per finished problem.
        inverted: what to do when the max chain is wrong and the min chain right, a sign that the
            reward is miscalibrated there: "swap" makes (min, max) a pair, "drop" makes none.
        stage2: run Self-Correction on problems whose chains are both wrong.
        stage3: run Diversity Induction with the small model on problems whose chains are both right.
    """

    search: SearchConfig = SearchConfig()
    reward: RewardConfig = RewardConfig()
    prompts: PromptConfig = PromptConfig()
    problems_per_batch: int = 8
    inverted: str = "drop"
    stage2: bool = True
    stage3: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.inverted not in INVERTED_POLICIES:
            raise ValueError(f"generate.inverted={self.inverted!r} is not one of {', '.join(INVERTED_POLICIES)}")
        if self.problems_per_batch < 1:
            raise ValueError(f"generate.problems_per_batch={self.problems_per_batch} must be at least 1")
