"""A scripted policy, reward and checker for search tests: their outputs are known in advance."""

from __future__ import annotations

import re
import time

from sphere_jax.grading import check_equal
from sphere_jax.search.policy import Candidate

SCORE = re.compile(r"\[r=([0-9.]+)\]")


class ScriptedPolicy:
    """Returns, for a prompt, the candidates its script lists for the last matching key."""

    def __init__(self, name: str, script: dict[str, list[str]], delay_s: float = 0.0):
        self.name = name
        self.script = script
        self.delay_s = delay_s
        self.tokens_generated = 0
        self.requests: list[str] = []

    def render(self, user: str, system: str | None) -> str:
        return f"<{self.name}>{user}</{self.name}>\n"

    def propose(self, requests):
        time.sleep(self.delay_s)
        out = []
        for request in requests:
            self.requests.append(request.prompt)
            key = max((k for k in self.script if k in request.prompt), key=len)
            texts = self.script[key][: request.n]
            assert len(texts) == request.n, f"script {key!r} has {len(texts)} candidates, {request.n} requested"
            self.tokens_generated += len(texts)
            out.append([Candidate(t, ended=False, num_tokens=1) for t in texts])
        return out


class ScriptedReward:
    """The score written in the candidate as [r=...]."""

    def score(self, queries):
        return [float(SCORE.search(q.candidate).group(1)) for q in queries]


class InProcessChecker:
    def check_many(self, pairs):
        return [check_equal(gold, prediction) for gold, prediction in pairs]


