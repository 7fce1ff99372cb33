"""Routing of searched problems to the three SPHERE stages, and the preference pairs they make.

- Stage 1, Self-Generation: max chain right, min chain wrong: chosen = max, rejected = min.
- Stage 2, Self-Correction: both wrong: the policy searches again on a correction prompt that
  shows its failed attempt; a corrected chain that reaches the gold answer is chosen against a
  wrong one.
- Stage 3, Diversity Induction: both right: a smaller model searches with 2E candidates; each of
  its plausible wrong chains (one with an answer) is rejected against the policy's max chain.
- Max chain wrong and min chain right ("inverted") says the reward is miscalibrated on that
  problem: the config swaps the pair or drops it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SELF_GENERATION = "self_generation"
SELF_CORRECTION = "self_correction"
DIVERSITY = "diversity_induction"
INVERTED = "inverted"


def route(max_correct: bool, min_correct: bool) -> str:
    """Return the stage of a problem from the correctness of its max and min chains."""
    if max_correct and not min_correct:
        return SELF_GENERATION
    if not max_correct and not min_correct:
        return SELF_CORRECTION
    if max_correct and min_correct:
        return DIVERSITY
    return INVERTED


@dataclasses.dataclass(frozen=True)
class ChainOutcome:
    """A finished chain as the stages see it."""

    text: str
    answer: str | None
    correct: bool
    scores: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    stage: str
    chosen_rewards: tuple[float, ...]
    rejected_rewards: tuple[float, ...]

    def to_json(self, **extra: Any) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["chosen_rewards"] = list(self.chosen_rewards)
        record["rejected_rewards"] = list(self.rejected_rewards)
        record.update(extra)
        return record


def stage1_pairs(prompt: str, max_chain: ChainOutcome, min_chain: ChainOutcome, inverted: str) -> list[Pair]:
    """Pairs of Stage 1 and of inverted problems ("swap" or "drop")."""
    stage = route(max_chain.correct, min_chain.correct)
    if stage == SELF_GENERATION:
        return [Pair(prompt, max_chain.text, min_chain.text, SELF_GENERATION, max_chain.scores, min_chain.scores)]
    if stage == INVERTED and inverted == "swap":
        return [Pair(prompt, min_chain.text, max_chain.text, INVERTED, min_chain.scores, max_chain.scores)]
    return []


def stage2_pairs(prompt: str, corrected: list[ChainOutcome], failed_attempt: ChainOutcome) -> list[Pair]:
    """Pair the first right corrected chain with a wrong corrected chain, or else the failed attempt."""
    right = [c for c in corrected if c.correct]
    if not right:
        return []
    wrong = [c for c in corrected if not c.correct] or [failed_attempt]
    chosen, rejected = right[0], wrong[0]
    return [Pair(prompt, chosen.text, rejected.text, SELF_CORRECTION, chosen.scores, rejected.scores)]


def stage3_pairs(prompt: str, policy_chain: ChainOutcome, small_chains: list[ChainOutcome]) -> list[Pair]:
    """Make a pair for each distinct plausible wrong chain of the small model."""
    pairs, seen = [], set()
    for chain in small_chains:
        if chain.correct or chain.answer is None or chain.text in seen:
            continue
        seen.add(chain.text)
        pairs.append(Pair(prompt, policy_chain.text, chain.text, DIVERSITY, policy_chain.scores, chain.scores))
    return pairs
