"""A generation run killed with SIGKILL and started again ends with the same pairs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).parent

RUNNER = r"""
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from scripted_search import InProcessChecker, ScriptedPolicy, ScriptedReward
from sphere_jax.data.problem import Problem
from sphere_jax.search.config import GeneratorConfig, SearchConfig
from sphere_jax.search.generator import GenerationModels, Generator

script = {{}}
problems = []
for i in range(8):
    q = f"Question {{i}}?"
    script[q] = [f"[r=0.{{(i + j) % 9 + 1}}] step \\boxed{{{{{{(i * j) % 4}}}}}}" for j in range(3)]
    problems.append(Problem(f"t:{{i}}", q, str(i % 4), "t", "train"))
policy = ScriptedPolicy("policy", script, delay_s={delay})
models = GenerationModels(policy, ScriptedReward())
config = GeneratorConfig(search=SearchConfig(candidates=3, max_depth=2), problems_per_batch=1, inverted="swap")
Generator(models, InProcessChecker(), config).run(problems, Path(sys.argv[1]))
"""


def start(out: Path, delay: float) -> subprocess.Popen:
    code = RUNNER.format(tests=str(TESTS), delay=delay)
    return subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_then_resume_gives_same_pairs(tmp_path):
    reference = start(tmp_path / "reference", 0.0)
    assert reference.wait(timeout=120) == 0, reference.stderr.read().decode()

    interrupted = tmp_path / "interrupted"
    process = start(interrupted, 0.5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((interrupted / "problems").glob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = len(list((interrupted / "problems").glob("*.json")))
    assert 3 <= finished_before < 8
    assert not (interrupted / "pairs.jsonl").exists()

    resumed = start(interrupted, 0.0)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()
    expected = (tmp_path / "reference" / "pairs.jsonl").read_text()
    assert expected.count("\n") >= 1
    assert (interrupted / "pairs.jsonl").read_text() == expected
    routes = [json.loads(line)["route"] for line in (interrupted / "trees.jsonl").read_text().splitlines()]
    reference_routes = [json.loads(line)["route"] for line in (tmp_path / "reference" / "trees.jsonl").read_text().splitlines()]
    assert routes == reference_routes and len(routes) == 8
    assert not [p for p in (interrupted / "problems").iterdir() if p.name.startswith(".")]  # no partial files
