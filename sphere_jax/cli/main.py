"""The `sphere` command line: run the SPHERE loop, evaluate, convert and export models."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("sphere")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="packaged:qwen2.5-coder-0.5b-instruct",
        help="model source: packaged:<name>, a .gguf file, an HF folder, or a hub id",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter and compute dtype")


def _info(args: argparse.Namespace) -> int:
    import jax

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} devices, "
          f"{jax.process_count()} processes")
    for device in jax.devices():
        print(f"  {device}")
    if args.model:
        from sphere_jax.weights.load import load_model

        loaded = load_model(args.model, param_dtype=args.dtype, compute_dtype=args.dtype, with_tokenizer=False)
        cfg = loaded.config
        print(f"model {args.model}: {cfg.architecture}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
              f"{cfg.num_heads} heads ({cfg.num_kv_heads} KV), vocab {cfg.vocab_size}, "
              f"{cfg.num_parameters() / 1e6:.0f}M parameters, weights from {loaded.folder}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from sphere_jax.evaluation.config import EvalConfig
    from sphere_jax.evaluation.run import run_evaluation
    from sphere_jax.evaluation.sampler_generator import SamplerGenerator
    from sphere_jax.sampling.sampler import Sampler, SamplerConfig
    from sphere_jax.weights.load import load_model

    config = EvalConfig(
        benchmarks=tuple(args.benchmarks),
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        answer_fallback=args.answer_fallback,
    )
    loaded = load_model(args.model, param_dtype=args.dtype, compute_dtype=args.dtype)
    sampler_config = SamplerConfig(max_cache_length=args.max_cache_length, matmul_dtype=args.matmul_dtype)
    sampler = Sampler(loaded.model, loaded.tokenizer, config=sampler_config)
    run_evaluation(config, SamplerGenerator(sampler), loaded.tokenizer, args.output_dir)
    return 0


def _run(args: argparse.Namespace) -> int:
    from sphere_jax.pipeline.config import load_run_config
    from sphere_jax.pipeline.loop import run

    config = load_run_config(args.config, args.overrides)
    _maybe_initialize_distributed()
    run(config)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from sphere_jax.pipeline.config import load_run_config
    from sphere_jax.pipeline.loop import generate_only

    config = load_run_config(args.config, args.overrides)
    _maybe_initialize_distributed()
    stats = generate_only(config)
    print(f"{stats.get('pairs', 0)} pairs from {stats.get('problems', 0)} problems in {config.run_dir}/generate")
    return 0


def _train(args: argparse.Namespace) -> int:
    from sphere_jax.pipeline.config import load_run_config
    from sphere_jax.pipeline.loop import train_only

    if not args.pairs.is_file():
        raise FileNotFoundError(f"pairs file {args.pairs} not found")
    config = load_run_config(args.config, args.overrides)
    _maybe_initialize_distributed()
    result = train_only(config, args.pairs)
    print(f"trained {result['steps']} steps on {result['pairs']} pairs; policy in {config.run_dir}/policy")
    return 0


def _maybe_initialize_distributed() -> None:
    """Join the other JAX processes of a multi-host job (TPU pod slices, or a coordinator in the env)."""
    import os

    import jax

    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()
        log.info("JAX process %d of %d", jax.process_index(), jax.process_count())


def _export(args: argparse.Namespace) -> int:
    from sphere_jax.weights.export import export_hf
    from sphere_jax.weights.load import load_model

    source = Path(args.model)
    if (source / "state.json").is_file():  # a run folder: export its latest trained policy
        trained = sorted(source.glob("iter*/policy/config.json"), key=lambda p: int(p.parent.parent.name[4:]))
        if not trained:
            raise FileNotFoundError(f"run folder {source} has no trained policy yet (no iter*/policy)")
        args.model = str(trained[-1].parent)
    loaded = load_model(args.model, param_dtype="float32", compute_dtype="float32")
    path = export_hf(loaded.model, loaded.config, args.output_dir, tokenizer=loaded.tokenizer,
                     dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from sphere_jax.weights.load import resolve_folder

    print(resolve_folder(args.model))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sphere", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run (or resume) the self-evolution loop from a YAML config")
    run.add_argument("config", type=Path, help="YAML config, e.g. configs/cpu_demo.yaml")
    run.add_argument("overrides", nargs="*", help="dotted overrides such as train.optimizer.learning_rate=1e-6")
    run.set_defaults(handler=_run)

    generate = commands.add_parser("generate", help="generate preference pairs with the config's policy")
    generate.add_argument("config", type=Path, help="YAML config")
    generate.add_argument("overrides", nargs="*", help="dotted overrides")
    generate.set_defaults(handler=_generate)

    train = commands.add_parser("train", help="train the config's policy with DPO on a pairs file")
    train.add_argument("config", type=Path, help="YAML config")
    train.add_argument("overrides", nargs="*", help="dotted overrides")
    train.add_argument("--pairs", type=Path, required=True, help="JSONL with prompt, chosen and rejected text")
    train.set_defaults(handler=_train)

    info = commands.add_parser("info", help="print devices and, with --model, the model's shape")
    info.add_argument("--model", default=None, help="model source to describe")
    info.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    info.set_defaults(handler=_info)

    evaluate = commands.add_parser("eval", help="greedy pass@1 of a model on problem sets")
    _add_model_arguments(evaluate)
    evaluate.add_argument("--benchmarks", nargs="+", default=["gsm8k:test"], help="problem-set specs, e.g. math500:test")
    evaluate.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    evaluate.add_argument("--max-new-tokens", type=int, default=512, help="maximum new tokens per answer")
    evaluate.add_argument("--max-cache-length", type=int, default=2048, help="prompt plus answer tokens per row")
    evaluate.add_argument("--batch-size", type=int, default=16, help="prompts per sampler call")
    evaluate.add_argument(
        "--matmul-dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="dtype of the sampler's weight matrices and KV cache (default: --dtype); bfloat16 is faster on "
        "CPUs with AVX512-BF16 at batch 8 and up",
    )
    evaluate.add_argument("--output-dir", type=Path, default=Path("runs/eval"), help="folder for reports and records")
    evaluate.add_argument(
        "--answer-fallback",
        default="none",
        choices=["none", "last_number"],
        help="last_number: grade the last number of an output that ended without a marked final answer",
    )
    evaluate.set_defaults(handler=_eval)

    export = commands.add_parser("export", help="write a model as an HF folder that transformers loads")
    export.add_argument("model", help="model source (see `eval --model`) or a run folder")
    export.add_argument("output_dir", type=Path, help="folder to create")
    export.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    export.set_defaults(handler=_export)

    convert = commands.add_parser("convert", help="convert a GGUF file or packaged model into the cached HF folder")
    convert.add_argument("model", help="model source")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
