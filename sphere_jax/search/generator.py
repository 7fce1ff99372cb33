"""One iteration of SPHERE data generation: search, route, correct, diversify, write pairs.

Problems are processed in fixed batches of `problems_per_batch`, in problem order. Each finished
problem is written to `problems/<index>.json` with an atomic rename, so a run killed at any moment
(SIGKILL included) and started again with the same arguments skips finished problems and
redoes only the batch it was in. Seeds derive from the problem id, not from batch order, and
batches are rebuilt identically, so a resumed run writes the same pairs as an uninterrupted one.
`pairs.jsonl`, `stats.json` and `trees.jsonl` are rebuilt from the per-problem files at the end.

On several JAX processes, batch b belongs to process b % process_count; the output folder must
be shared, and process 0 merges after all have finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sphere_jax.data.problem import Problem
from sphere_jax.grading.extract import extract_answer_or_fallback
from sphere_jax.search import stages
from sphere_jax.search.config import GeneratorConfig, fill_template
from sphere_jax.search.policy import StepPolicy
from sphere_jax.search.pruned_search import Chain, PhaseTimes, SearchResult, SearchTask, pruned_search
from sphere_jax.search.rewards import StepReward

log = logging.getLogger(__name__)


@dataclasses.dataclass
class GenerationModels:
    """The policy and its step reward, and the optional Stage 3 small model and its reward."""

    policy: StepPolicy
    reward: StepReward
    small_policy: StepPolicy | None = None
    small_reward: StepReward | None = None


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(payload, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: Path, records: Sequence[dict[str, Any]]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            for record in records:
                out.write(json.dumps(record) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Generator:
    """Run the three stages over problems and write the results of one iteration."""

    def __init__(self, models: GenerationModels, checker: Any, config: GeneratorConfig):
        self.models = models
        self.checker = checker
        self.config = config
        self.delimiter = config.search.step_delimiter
        self.system = config.prompts.text("solve_system")
        self.correction = config.prompts.text("correction_user")

    # ------------------------------------------------------------------------------------

    def run(
        self,
        problems: Sequence[Problem],
        out_dir: Path,
        *,
        iteration: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> dict[str, Any]:
        """Generate pairs for `problems` into `out_dir`, resuming finished problems; return the stats."""
        out_dir = Path(out_dir)
        problem_dir = out_dir / "problems"
        problem_dir.mkdir(parents=True, exist_ok=True)
        size = self.config.problems_per_batch
        batches = [list(range(start, min(start + size, len(problems)))) for start in range(0, len(problems), size)]
        mine = [b for i, b in enumerate(batches) if i % process_count == process_index]
        todo = [b for b in mine if any(not _problem_path(problem_dir, i).exists() for i in b)]
        done_before = sum(len(b) for b in mine) - sum(len(b) for b in todo)
        if done_before:
            log.info("resuming: %d of %d problems already finished", done_before, sum(len(b) for b in mine))
        progress = tqdm(total=sum(len(b) for b in mine), initial=done_before, desc=f"generate it{iteration}", unit="problem")
        for batch in todo:
            records = self._run_batch([problems[i] for i in batch], iteration)
            for index, record in zip(batch, records):
                path = _problem_path(problem_dir, index)
                if not path.exists():
                    write_json_atomic(path, record)
            progress.update(len(batch))
        progress.close()
        if process_count > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"sphere-generate-{iteration}")
            if process_index != 0:
                return {}
        return merge_outputs(out_dir, len(problems), iteration)

    # ------------------------------------------------------------------------------------

    def _run_batch(self, problems: Sequence[Problem], iteration: int) -> list[dict[str, Any]]:
        cfg = self.config
        times = PhaseTimes()
        started = time.perf_counter()
        policy = self.models.policy
        tokens_before = policy.tokens_generated + (self.models.small_policy.tokens_generated if self.models.small_policy else 0)

        tasks = [
            SearchTask(f"it{iteration}/{p.id}/stage1/seed{cfg.seed}", p.question, p.answer, policy.render(p.question, self.system))
            for p in problems
        ]
        stage1 = pruned_search(tasks, policy, self.models.reward, cfg.search, times=times)
        outcomes1 = self._outcomes([(r.max_chain, r.task) for r in stage1] + [(r.min_chain, r.task) for r in stage1], times)
        max_out, min_out = outcomes1[: len(stage1)], outcomes1[len(stage1) :]

        records = []
        for problem, result, best, worst in zip(problems, stage1, max_out, min_out):
            route = stages.route(best.correct, worst.correct)
            records.append(
                {
                    "id": problem.id,
                    "question": problem.question,
                    "gold": problem.answer,
                    "iteration": iteration,
                    "route": route,
                    "stage1": _search_json(result, best, worst, self.delimiter),
                    "pairs": [
                        pair.to_json(problem_id=problem.id, iteration=iteration)
                        for pair in stages.stage1_pairs(result.task.prompt, best, worst, cfg.inverted)
                    ],
                }
            )

        if cfg.stage2:
            self._stage2(problems, stage1, max_out, records, iteration, times)
        if cfg.stage3 and self.models.small_policy is not None:
            self._stage3(problems, stage1, max_out, records, iteration, times)

        times.total = time.perf_counter() - started
        tokens_after = policy.tokens_generated + (self.models.small_policy.tokens_generated if self.models.small_policy else 0)
        share = 1.0 / max(len(records), 1)
        for record in records:  # batch-level costs, split evenly so the per-problem sums add up
            record["tokens_generated"] = (tokens_after - tokens_before) * share
            record["times"] = {k: v * share for k, v in times.to_json().items()}
        return records

    def _stage2(self, problems, stage1, max_out, records, iteration, times) -> None:
        cfg = self.config
        indices = [i for i, r in enumerate(records) if r["route"] == stages.SELF_CORRECTION]
        if not indices:
            return
        policy = self.models.policy
        tasks = []
        for i in indices:
            user = fill_template(self.correction, question=problems[i].question, attempt=max_out[i].text)
            key = f"it{iteration}/{problems[i].id}/stage2/seed{cfg.seed}"
            tasks.append(SearchTask(key, problems[i].question, problems[i].answer, policy.render(user, self.system)))
        results = pruned_search(tasks, policy, self.models.reward, cfg.search, times=times)
        outcomes = self._outcomes([(r.max_chain, r.task) for r in results] + [(r.min_chain, r.task) for r in results], times)
        for k, (i, result) in enumerate(zip(indices, results)):
            best, worst = outcomes[k], outcomes[len(results) + k]
            # The pair teaches solving the question: it is posed under the plain question prompt.
            pairs = stages.stage2_pairs(stage1[i].task.prompt, [best, worst], max_out[i])
            records[i]["stage2"] = _search_json(result, best, worst, self.delimiter) | {"correction_prompt": result.task.prompt}
            records[i]["pairs"] += [p.to_json(problem_id=problems[i].id, iteration=iteration) for p in pairs]

    def _stage3(self, problems, stage1, max_out, records, iteration, times) -> None:
        cfg = self.config
        indices = [i for i, r in enumerate(records) if r["route"] == stages.DIVERSITY]
        if not indices:
            return
        small = self.models.small_policy
        tasks = [
            SearchTask(
                f"it{iteration}/{problems[i].id}/stage3/seed{cfg.seed}",
                problems[i].question,
                problems[i].answer,
                small.render(problems[i].question, self.system),
            )
            for i in indices
        ]
        reward = self.models.small_reward or self.models.reward
        results = pruned_search(tasks, small, reward, cfg.search, candidates=2 * cfg.search.candidates, times=times)
        outcomes = self._outcomes([(r.max_chain, r.task) for r in results] + [(r.min_chain, r.task) for r in results], times)
        for k, (i, result) in enumerate(zip(indices, results)):
            best, worst = outcomes[k], outcomes[len(results) + k]
            pairs = stages.stage3_pairs(stage1[i].task.prompt, max_out[i], [best, worst])
            records[i]["stage3"] = _search_json(result, best, worst, self.delimiter) | {"model": small.name}
            records[i]["pairs"] += [p.to_json(problem_id=problems[i].id, iteration=iteration) for p in pairs]

    def _outcomes(self, chains: Sequence[tuple[Chain, SearchTask]], times: PhaseTimes) -> list[stages.ChainOutcome]:
        """Extract and check each chain's final answer in one checker batch."""
        texts = [chain.text(self.delimiter) for chain, _ in chains]
        answers = [
            extract_answer_or_fallback(text, self.config.search.answer_fallback, finished=chain.end != "depth")
            for text, (chain, _) in zip(texts, chains)
        ]
        started = time.perf_counter()
        verdicts = self.checker.check_many([(task.gold, answer or "") for (_, task), answer in zip(chains, answers)])
        times.checking += time.perf_counter() - started
        return [
            stages.ChainOutcome(
                text=text,
                answer=answer,
                correct=bool(verdict.equal),
                scores=tuple(step.score for step in chain.steps),
            )
            for (chain, _), text, answer, verdict in zip(chains, texts, answers, verdicts)
        ]


def _problem_path(problem_dir: Path, index: int) -> Path:
    return problem_dir / f"{index:07d}.json"


def _search_json(result: SearchResult, best: stages.ChainOutcome, worst: stages.ChainOutcome, delimiter: str) -> dict:
    return {
        "prompt": result.task.prompt,
        "max_chain": result.max_chain.to_json() | {"answer": best.answer, "correct": best.correct},
        "min_chain": result.min_chain.to_json() | {"answer": worst.answer, "correct": worst.correct},
    }


def merge_outputs(out_dir: Path, num_problems: int, iteration: int) -> dict[str, Any]:
    """Rebuild pairs.jsonl, trees.jsonl and stats.json from the per-problem files, in problem order."""
    problem_dir = out_dir / "problems"
    records = []
    for index in range(num_problems):
        path = _problem_path(problem_dir, index)
        if not path.exists():
            raise FileNotFoundError(f"{path}: problem {index} has no result; rerun the same command to finish it")
        records.append(json.loads(path.read_text()))
    pairs = [pair for record in records for pair in record["pairs"]]
    write_jsonl_atomic(out_dir / "pairs.jsonl", pairs)
    write_jsonl_atomic(out_dir / "trees.jsonl", [{k: v for k, v in r.items() if k != "pairs"} for r in records])
    stats = generation_stats(records, iteration)
    write_json_atomic(out_dir / "stats.json", stats)
    log.info(
        "iteration %d: %d problems -> %d pairs (%s)",
        iteration,
        len(records),
        len(pairs),
        ", ".join(f"{k}: {v}" for k, v in stats["pairs_per_stage"].items()),
    )
    return stats


def generation_stats(records: Sequence[dict[str, Any]], iteration: int) -> dict[str, Any]:
    """Per-stage counts, chain correctness, depth, tokens and time of one iteration."""
    routes = Counter(r["route"] for r in records)
    pair_stages = Counter(p["stage"] for r in records for p in r["pairs"])
    depths = [len(r["stage1"][side]["steps"]) for r in records for side in ("max_chain", "min_chain")]
    times: Counter[str] = Counter()
    for r in records:
        times.update(r.get("times", {}))
    stage2 = [r for r in records if "stage2" in r]
    stage3 = [r for r in records if "stage3" in r]
    return {
        "iteration": iteration,
        "problems": len(records),
        "problems_per_route": {name: routes.get(name, 0) for name in (
            stages.SELF_GENERATION, stages.SELF_CORRECTION, stages.DIVERSITY, stages.INVERTED)},
        "pairs": sum(pair_stages.values()),
        "pairs_per_stage": {name: pair_stages.get(name, 0) for name in (
            stages.SELF_GENERATION, stages.SELF_CORRECTION, stages.DIVERSITY, stages.INVERTED)},
        "max_chain_correct": sum(r["stage1"]["max_chain"]["correct"] for r in records),
        "min_chain_correct": sum(r["stage1"]["min_chain"]["correct"] for r in records),
        "stage2_corrected": sum(any(r["stage2"][s]["correct"] for s in ("max_chain", "min_chain")) for r in stage2),
        "stage3_small_wrong_chains": sum(
            sum(not r["stage3"][s]["correct"] for s in ("max_chain", "min_chain")) for r in stage3
        ),
        "mean_depth": sum(depths) / len(depths) if depths else 0.0,
        "tokens_generated": round(sum(r.get("tokens_generated", 0) for r in records)),
        "seconds": {k: round(v, 2) for k, v in sorted(times.items())},
    }
