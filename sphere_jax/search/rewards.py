"""Step rewards behind one interface: a score in [0, 1] for a candidate step after a prefix.

Backends:
- `RolloutReward`: Monte-Carlo value, the fraction of k policy completions from the candidate
  step that reach the gold answer (outcome-supervised; no extra model).
- `SelfJudgeReward`: the policy's own P(Yes) / (P(Yes) + P(No)) under a verification prompt;
  one prefill per candidate, no decoding.
- `PRMReward`: a process reward model's probability that the step is correct (Qwen2.5-Math-PRM).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from sphere_jax.grading import extract_answer, last_boxed
from sphere_jax.grading.extract import extract_answer_or_fallback
from sphere_jax.search.config import fill_template


@dataclasses.dataclass(frozen=True)
class StepQuery:
    """A candidate step to score: the problem, the rendered prompt, the steps before it, the step."""

    question: str
    gold: str
    prompt: str
    steps: tuple[str, ...]
    candidate: str


class StepReward(Protocol):
    def score(self, queries: Sequence[StepQuery]) -> list[float]:
        """Return one score in [0, 1] per query."""
        ...


class RolloutReward:
    """Score a step by completing the solution `rollouts` times and checking the answers."""

    def __init__(
        self,
        policy: Any,
        checker: Any,
        *,
        rollouts: int,
        max_tokens: int,
        delimiter: str,
        seed: int = 0,
        answer_fallback: str = "none",
    ):
        self.policy = policy
        self.answer_fallback = answer_fallback
        self.checker = checker
        self.rollouts = rollouts
        self.max_tokens = max_tokens
        self.delimiter = delimiter
        self.seed = seed

    def score(self, queries: Sequence[StepQuery]) -> list[float]:
        if not queries:
            return []
        prompts, finished_answers, query_prefix = [], {}, []
        for index, query in enumerate(queries):
            steps = (*query.steps, query.candidate)
            text = self.delimiter.join(steps)
            answer = extract_answer(query.candidate) if last_boxed(query.candidate) is not None else None
            if answer is not None:
                finished_answers[index] = answer  # a final step needs no rollout: it is its own outcome
            prompts.append(query.prompt + text + self.delimiter)
            query_prefix.append(text + self.delimiter)
        to_roll = [i for i in range(len(queries)) if i not in finished_answers]
        completions = (
            self.policy.complete([prompts[i] for i in to_roll], n=self.rollouts, seed=self.seed, max_tokens=self.max_tokens)
            if to_roll
            else []
        )
        pairs, owners = [], []
        for index, answer in finished_answers.items():
            pairs.append((queries[index].gold, answer))
            owners.append((index, self.rollouts))  # weight: counts as every rollout
        for index, samples in zip(to_roll, completions):
            for sample in samples:
                answer = extract_answer_or_fallback(
                    query_prefix[index] + sample.text, self.answer_fallback, finished=sample.ended
                )
                pairs.append((queries[index].gold, answer or ""))
                owners.append((index, 1))
        verdicts = self.checker.check_many(pairs)
        correct = [0.0] * len(queries)
        for (index, weight), verdict in zip(owners, verdicts):
            correct[index] += weight * float(verdict.equal)
        return [c / self.rollouts for c in correct]


class SelfJudgeReward:
    """Score a step by the policy's own probability of answering "Yes" to a verification prompt."""

    def __init__(self, policy: Any, judge_template: str, *, delimiter: str):
        self.policy = policy
        self.judge_template = judge_template
        self.delimiter = delimiter

    def score(self, queries: Sequence[StepQuery]) -> list[float]:
        if not queries:
            return []
        prompts = []
        for query in queries:
            steps = "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate((*query.steps, query.candidate)))
            user = fill_template(self.judge_template, question=query.question, steps=steps)
            prompts.append(self.policy.render(user, None))
        return self.policy.yes_probability(prompts)


class PRMReward:
    """Score a step by a process reward model: P(correct) at the separator after the step."""

    def __init__(self, prm: Any, tokenizer: Any):
        self.prm = prm
        self.tokenizer = tokenizer

    def score(self, queries: Sequence[StepQuery]) -> list[float]:
        if not queries:
            return []
        from sphere_jax.models.prm import score_steps

        items = [(query.question, [*query.steps, query.candidate]) for query in queries]
        return [rewards[-1] if rewards else 0.0 for rewards in score_steps(self.prm, self.tokenizer, items)]
