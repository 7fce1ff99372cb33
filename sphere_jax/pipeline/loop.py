"""The self-evolution loop of `sphere run`: evaluate, then per iteration generate, train, evaluate.

Run folder (`run_dir`):
    config.yaml          the resolved config; a rerun with a different config is rejected
    state.json           finished phases, so a rerun of the same command resumes
    logs/sphere.log      the log
    metrics.jsonl        one record per DPO step and per evaluation
    tensorboard/         the same metrics as TensorBoard events
    iter<i>/generate/    pairs.jsonl, trees.jsonl, stats.json and per-problem results
    iter<i>/checkpoints/ Orbax checkpoints of the DPO run
    iter<i>/policy/      the trained policy as an fp32 HF folder; the next iteration starts from it
    eval/base, eval/iter<i>/   evaluation reports and per-problem records
    plots/               accuracy per benchmark over iterations; DPO loss and reward margins
    export/              the final policy as an HF folder
    summary.md           per-stage counts, pairs, accuracy before and after, time per phase
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import yaml

from sphere_jax.pipeline.config import RunConfig
from sphere_jax.pipeline import plots
from sphere_jax.search.generator import write_json_atomic
from sphere_jax.typed_config import ConfigError, to_dict

log = logging.getLogger("sphere.run")


class RunState:
    """Finished phases and their results, saved atomically after each phase."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"done": {}, "seconds": {}}

    def done(self, phase: str) -> bool:
        return phase in self.data["done"]

    def result(self, phase: str) -> Any:
        return self.data["done"].get(phase)

    def finish(self, phase: str, result: Any, seconds: float) -> None:
        self.data["done"][phase] = result
        self.data["seconds"][phase] = round(seconds, 1)
        write_json_atomic(self.path, self.data)


class MetricsWriter:
    """Append metrics to metrics.jsonl and TensorBoard."""

    def __init__(self, run_dir: Path):
        from tensorboardX import SummaryWriter

        self.jsonl = (run_dir / "metrics.jsonl").open("a")
        self.board = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, kind: str, step: int, values: dict[str, Any], **tags: Any) -> None:
        self.jsonl.write(json.dumps({"kind": kind, "step": step, **tags, **values}) + "\n")
        self.jsonl.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.board.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        self.jsonl.close()
        self.board.close()


def prepare_run_dir(config: RunConfig) -> Path:
    """Create the run folder, or check that an existing one was started with the same config."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(config)
    saved_path = run_dir / "config.yaml"
    if saved_path.exists():
        saved = yaml.safe_load(saved_path.read_text())
        if saved != yaml.safe_load(yaml.safe_dump(resolved)):
            differing = sorted(k for k in set(saved) | set(resolved) if saved.get(k) != yaml.safe_load(yaml.safe_dump(resolved)).get(k))
            raise ConfigError(
                f"{run_dir} holds a run started with another config (sections differ: {', '.join(differing)}); "
                "rerun with the same config to resume it, or choose a new run_dir"
            )
    else:
        saved_path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    (run_dir / "logs").mkdir(exist_ok=True)
    handler = logging.FileHandler(run_dir / "logs" / "sphere.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return run_dir


def run(config: RunConfig) -> dict[str, Any]:
    """Run (or resume) the whole loop; return the summary."""
    from sphere_jax.data import load_problems
    from sphere_jax.grading import AnswerChecker
    from sphere_jax.weights.load import load_model

    run_dir = prepare_run_dir(config)
    state = RunState(run_dir / "state.json")
    metrics = MetricsWriter(run_dir)
    log.info("run %s: %d iterations, policy %s", run_dir, config.iterations, config.policy.source)

    problems = load_problems(config.data.train, limit=config.data.limit, seed=config.data.subset_seed).problems
    log.info("loaded %d training problems from %s", len(problems), config.data.train)

    with AnswerChecker(workers=config.eval.checker_workers, deadline_s=config.eval.checker_deadline_s) as checker:
        policy_source = _latest_policy(config, run_dir, state)
        loaded = load_model(policy_source, param_dtype=config.policy.dtype, compute_dtype=config.policy.dtype)
        policy = _make_policy("policy", loaded, config)

        if config.eval_before and not state.done("eval:base"):
            started = time.perf_counter()
            result = _evaluate(config, policy, loaded.tokenizer, checker, run_dir / "eval" / "base")
            metrics.write("eval", 0, _flat_accuracy(result), iteration="base")
            state.finish("eval:base", result, time.perf_counter() - started)

        small = None
        for iteration in range(config.iterations):
            if state.done(f"eval:{iteration}"):
                continue
            if not state.done(f"generate:{iteration}"):
                started = time.perf_counter()
                if small is None and config.generate.stage3 and config.small_model.source:
                    small_loaded = load_model(config.small_model.source, param_dtype=config.small_model.dtype,
                                              compute_dtype=config.small_model.dtype)
                    small = _make_policy("small", small_loaded, config)
                stats = _generate(config, policy, small, checker, run_dir / f"iter{iteration}" / "generate", iteration)
                metrics.write("generate", iteration, {k: v for k, v in stats.items() if isinstance(v, (int, float))})
                state.finish(f"generate:{iteration}", stats, time.perf_counter() - started)
            if not state.done(f"train:{iteration}"):
                started = time.perf_counter()
                policy.sampler.release_weights()  # the trainer needs the memory; update_model below restores it
                result = _train(config, loaded, run_dir / f"iter{iteration}", metrics, iteration)
                state.finish(f"train:{iteration}", result, time.perf_counter() - started)
            loaded = load_model(str(run_dir / f"iter{iteration}" / "policy"), param_dtype=config.policy.dtype,
                                compute_dtype=config.policy.dtype)
            policy.sampler.update_model(loaded.model)  # same shapes: no recompilation
            started = time.perf_counter()
            result = _evaluate(config, policy, loaded.tokenizer, checker, run_dir / "eval" / f"iter{iteration}")
            metrics.write("eval", iteration + 1, _flat_accuracy(result), iteration=iteration)
            state.finish(f"eval:{iteration}", result, time.perf_counter() - started)

    if config.export.enabled and not state.done("export"):
        from sphere_jax.weights.export import export_hf

        started = time.perf_counter()
        final = load_model(_latest_policy(config, run_dir, state))
        export_hf(final.model, final.config, run_dir / "export", tokenizer=final.tokenizer,
                  dtype=config.export.dtype, overwrite=True)
        state.finish("export", str(run_dir / "export"), time.perf_counter() - started)
    metrics.close()
    plots.write_plots(run_dir, state.data)
    summary = plots.write_summary(run_dir, config, state.data)
    print(summary)
    return state.data


def generate_only(config: RunConfig) -> dict[str, Any]:
    """Run the data generation of one iteration with the configured policy into run_dir/generate."""
    from sphere_jax.grading import AnswerChecker
    from sphere_jax.weights.load import load_model

    run_dir = prepare_run_dir(config)
    with AnswerChecker(workers=config.eval.checker_workers, deadline_s=config.eval.checker_deadline_s) as checker:
        loaded = load_model(config.policy.source, param_dtype=config.policy.dtype, compute_dtype=config.policy.dtype)
        policy = _make_policy("policy", loaded, config)
        small = None
        if config.generate.stage3 and config.small_model.source:
            small_loaded = load_model(config.small_model.source, param_dtype=config.small_model.dtype,
                                      compute_dtype=config.small_model.dtype)
            small = _make_policy("small", small_loaded, config)
        return _generate(config, policy, small, checker, run_dir / "generate", 0)


def train_only(config: RunConfig, pairs_path: Path) -> dict[str, Any]:
    """Train the configured policy with DPO on a pairs file; write run_dir/policy (an HF folder)."""
    from sphere_jax.weights.load import load_model

    run_dir = prepare_run_dir(config)
    staged = run_dir / "generate" / "pairs.jsonl"
    if Path(pairs_path).resolve() != staged.resolve():
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(Path(pairs_path).read_text())
    loaded = load_model(config.policy.source, param_dtype=config.policy.dtype, compute_dtype=config.policy.dtype)
    metrics = MetricsWriter(run_dir)
    try:
        return _train(config, loaded, run_dir, metrics, 0)
    finally:
        metrics.close()


def _latest_policy(config: RunConfig, run_dir: Path, state: RunState) -> str:
    trained = [i for i in range(config.iterations) if state.done(f"train:{i}")]
    return str(run_dir / f"iter{max(trained)}" / "policy") if trained else config.policy.source


def _make_policy(name: str, loaded: Any, config: RunConfig) -> Any:
    from sphere_jax.search.policy import SamplerPolicy

    search = config.generate.search
    return SamplerPolicy(
        name,
        loaded.model,
        loaded.tokenizer,
        step_delimiter=search.step_delimiter,
        temperature=search.temperature,
        top_p=search.top_p,
        max_step_tokens=search.max_step_tokens,
        sampler_config=config.sampler,
    )


def _make_reward(config: RunConfig, policy: Any, checker: Any) -> Any:
    from sphere_jax.search.rewards import PRMReward, RolloutReward, SelfJudgeReward

    reward = config.generate.reward
    delimiter = config.generate.search.step_delimiter
    if reward.backend == "rollout":
        return RolloutReward(policy, checker, rollouts=reward.rollouts, max_tokens=reward.rollout_max_tokens,
                             delimiter=delimiter, seed=config.seed,
                             answer_fallback=config.generate.search.answer_fallback)
    if reward.backend == "self_judge":
        return SelfJudgeReward(policy, config.generate.prompts.text("judge_user"), delimiter=delimiter)
    from sphere_jax.weights.load import load_model

    prm = load_model(reward.prm_model)
    return PRMReward(prm.model, prm.tokenizer)


def _generate(config: RunConfig, policy: Any, small: Any, checker: Any, out_dir: Path, iteration: int) -> dict:
    import jax
    from sphere_jax.data import load_problems
    from sphere_jax.search.generator import GenerationModels, Generator

    problems = load_problems(config.data.train, limit=config.data.limit, seed=config.data.subset_seed).problems
    reward = _make_reward(config, policy, checker)
    small_reward = _make_reward(config, small, checker) if small is not None and config.generate.reward.backend != "prm" else None
    models = GenerationModels(policy, reward, small, small_reward)
    generator = Generator(models, checker, config.generate)
    return generator.run(problems, out_dir, iteration=iteration,
                         process_index=jax.process_index(), process_count=jax.process_count())


def _train(config: RunConfig, loaded: Any, iter_dir: Path, metrics: MetricsWriter, iteration: int) -> dict:
    import dataclasses

    from sphere_jax.training.checkpointing import CheckpointConfig
    from sphere_jax.training.mesh import make_mesh
    from sphere_jax.training.trainer import DPOTrainer
    from sphere_jax.weights.export import export_hf

    pairs_path = iter_dir / "generate" / "pairs.jsonl"
    num_pairs = sum(1 for line in pairs_path.open() if line.strip())
    if num_pairs == 0:
        log.warning("iteration %d made no pairs; the policy is carried over untrained", iteration)
        export_hf(loaded.model, loaded.config, iter_dir / "policy", tokenizer=loaded.tokenizer, dtype="float32", overwrite=True)
        return {"pairs": 0, "steps": 0}
    batch_size = min(config.train.batch_size, num_pairs)
    mesh = make_mesh(config.mesh)
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = max(batch_devices, batch_size - batch_size % batch_devices)
    steps = config.epochs * math.ceil(num_pairs / batch_size)
    train_config = dataclasses.replace(
        config.train,
        batch_size=batch_size,
        gradient_accumulation_steps=1 if batch_size % config.train.gradient_accumulation_steps else config.train.gradient_accumulation_steps,
        optimizer=dataclasses.replace(config.train.optimizer, total_steps=steps),
        checkpoint=CheckpointConfig(directory=str((iter_dir / "checkpoints").resolve()),
                                    save_interval_steps=max(1, steps // 4), max_to_keep=2),
        reference_id=f"iter{iteration}-start",
        seed=config.seed + iteration,
    )
    with DPOTrainer(loaded.model, loaded.tokenizer, pairs_path, train_config, mesh=mesh) as trainer:
        remaining = steps - trainer.step
        log.info("iteration %d: DPO on %d pairs, %d steps (%d to go)", iteration, num_pairs, steps, remaining)
        history = trainer.train(remaining)
        for offset, values in enumerate(history):
            metrics.write("train", trainer.step - len(history) + offset + 1, values, iteration=iteration)
        export_hf(trainer.model(), loaded.config, iter_dir / "policy", tokenizer=loaded.tokenizer, dtype="float32",
                  overwrite=True)
        last = history[-1] if history else {}
    return {"pairs": num_pairs, "steps": steps, "final": {k: float(v) for k, v in last.items()}}


def _evaluate(config: RunConfig, policy: Any, tokenizer: Any, checker: Any, out_dir: Path) -> dict:
    from sphere_jax.evaluation.run import run_evaluation
    from sphere_jax.evaluation.sampler_generator import SamplerGenerator

    results = run_evaluation(config.eval, SamplerGenerator(policy.sampler), tokenizer, out_dir, checker=checker)
    return {r.report["benchmark"]: {name: m["value"] for name, m in r.report["metrics"].items()} for r in results}


def _flat_accuracy(result: dict) -> dict[str, float]:
    return {f"{bench}/{metric}": value for bench, metrics in result.items() for metric, value in metrics.items()}
