"""The pruned search: at every depth sample E candidate steps, keep only the best and the worst.

From the root, one expansion of E candidates gives the first step of both chains: the highest
reward starts the max chain and the lowest the min chain. From then on each chain expands on its
own (E candidates) and keeps its extreme: the max chain the highest advantage, the min chain the
lowest. A chain ends at a final answer, when the model stops (EOS), or at the depth limit.

All open chains of all problems at one depth go to the policy in one call and their candidates to
the reward in one call, so the sampler batches across problems and shares each prefix (fan-out).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import zlib
from collections.abc import Sequence
from typing import Any

from sphere_jax.grading import last_boxed
from sphere_jax.search.config import SearchConfig
from sphere_jax.search.policy import Candidate, StepPolicy, StepRequest
from sphere_jax.search.rewards import StepQuery, StepReward

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SearchTask:
    """One search: a rendered prompt for a problem, and the seed namespace of its samples."""

    key: str  # e.g. "it0/gsm8k:train:17/stage1"; seeds derive from it, not from batch order
    question: str
    gold: str
    prompt: str


@dataclasses.dataclass
class Step:
    """A chosen step with its reward, and the candidates it was chosen from (for inspection)."""

    text: str
    score: float
    advantage: float
    candidates: list[dict[str, Any]]
    chosen: int


@dataclasses.dataclass
class Chain:
    kind: str  # "max" or "min"
    steps: list[Step] = dataclasses.field(default_factory=list)
    finished: bool = False
    end: str = ""  # "answer", "eos" or "depth"

    def text(self, delimiter: str) -> str:
        return delimiter.join(step.text for step in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "end": self.end,
            "steps": [dataclasses.asdict(step) for step in self.steps],
        }


@dataclasses.dataclass
class SearchResult:
    task: SearchTask
    max_chain: Chain
    min_chain: Chain


@dataclasses.dataclass
class PhaseTimes:
    """Wall seconds by phase; `host` is what remains of the total."""

    sampling: float = 0.0
    reward: float = 0.0
    checking: float = 0.0
    total: float = 0.0

    @property
    def host(self) -> float:
        return max(self.total - self.sampling - self.reward - self.checking, 0.0)

    def add(self, other: PhaseTimes) -> None:
        self.sampling += other.sampling
        self.reward += other.reward
        self.checking += other.checking
        self.total += other.total

    def to_json(self) -> dict[str, float]:
        return {
            "sampling_s": round(self.sampling, 3),
            "reward_s": round(self.reward, 3),
            "checking_s": round(self.checking, 3),
            "host_s": round(self.host, 3),
            "total_s": round(self.total, 3),
        }


def stable_seed(*parts: Any) -> int:
    """Return a 31-bit seed from the parts' text, identical across processes and runs."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def is_final_step(text: str, answer_pattern: str) -> bool:
    if last_boxed(text) is not None:
        return True
    return bool(answer_pattern) and re.search(answer_pattern, text) is not None


def pruned_search(
    tasks: Sequence[SearchTask],
    policy: StepPolicy,
    reward: StepReward,
    config: SearchConfig,
    *,
    candidates: int | None = None,
    times: PhaseTimes | None = None,
) -> list[SearchResult]:
    """Run the pruned search for every task together; return the max and min chain of each."""
    width = candidates or config.candidates
    times = times if times is not None else PhaseTimes()
    delimiter = config.step_delimiter
    results = [SearchResult(task, Chain("max"), Chain("min")) for task in tasks]

    for depth in range(config.max_depth):
        # Which chains expand now: at depth 0 one shared root per task, then every open chain.
        expansions: list[tuple[int, list[Chain]]] = []
        for index, result in enumerate(results):
            if depth == 0:
                expansions.append((index, [result.max_chain, result.min_chain]))
            else:
                expansions.extend((index, [chain]) for chain in (result.max_chain, result.min_chain) if not chain.finished)
        if not expansions:
            break

        requests = []
        for index, chains in expansions:
            task, chain = results[index].task, chains[0]
            prefix = chain.text(delimiter)
            prompt = task.prompt + (prefix + delimiter if prefix else "")
            side = "root" if depth == 0 else chain.kind
            requests.append(StepRequest(prompt=prompt, n=width, seed=stable_seed(task.key, side, depth)))
        started = time.perf_counter()
        proposals = policy.propose(requests)
        times.sampling += time.perf_counter() - started

        queries = []
        for (index, chains), cands in zip(expansions, proposals):
            task, chain = results[index].task, chains[0]
            steps = tuple(step.text for step in chain.steps)
            queries.extend(StepQuery(task.question, task.gold, task.prompt, steps, c.text) for c in cands)
        started = time.perf_counter()
        scores = reward.score(queries)
        times.reward += time.perf_counter() - started
        log.info(
            "depth %d: expanded %d nodes of %d searches into %d candidates (%.0f s sampling, %.0f s reward so far)",
            depth, len(expansions), len(tasks), len(queries), times.sampling, times.reward,
        )

        offset = 0
        for (index, chains), cands in zip(expansions, proposals):
            cand_scores = scores[offset : offset + len(cands)]
            offset += len(cands)
            for chain in chains:
                _extend(chain, cands, cand_scores, depth, config)
    for result in results:
        for chain in (result.max_chain, result.min_chain):
            if not chain.finished:
                chain.finished, chain.end = True, "depth"
    return results


def _extend(chain: Chain, cands: list[Candidate], scores: list[float], depth: int, config: SearchConfig) -> None:
    """Append the max chain's best or the min chain's worst candidate, and mark a final step."""
    parent = chain.steps[-1].score if chain.steps else None
    advantages = [s - parent if parent is not None else s for s in scores]
    if chain.kind == "max":
        chosen = max(range(len(cands)), key=lambda i: (advantages[i], -i))  # first of equal maxima
    else:
        chosen = min(range(len(cands)), key=lambda i: (advantages[i], -i))  # last of equal minima
    record = [
        {"text": c.text, "score": s, "advantage": a, "ended": c.ended, "tokens": c.num_tokens}
        for c, s, a in zip(cands, scores, advantages)
    ]
    candidate = cands[chosen]
    chain.steps.append(Step(candidate.text, scores[chosen], advantages[chosen], record, chosen))
    if is_final_step(candidate.text, config.answer_pattern):
        chain.finished, chain.end = True, "answer"
    elif candidate.ended:
        chain.finished, chain.end = True, "eos"
    elif depth + 1 >= config.max_depth:
        chain.finished, chain.end = True, "depth"
