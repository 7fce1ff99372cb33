"""Measure the pruned search: nodes expanded per second, tokens/s, and where the wall time goes.

Runs one iteration of data generation (`sphere generate`) from a config, or reads a finished
generation folder, and reports from its stats.json and trees.jsonl:

    python scripts/bench_search.py --config configs/cpu_demo.yaml data.limit=32
    python scripts/bench_search.py --generate-dir runs/cpu_demo/iter0/generate

Goal: host code and answer checking together under 10% of the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path


def expansions(trees: list[dict]) -> int:
    """Count node expansions: one shared root per search, then one per further step of each chain."""
    count = 0
    for tree in trees:
        for stage in ("stage1", "stage2", "stage3"):
            if stage in tree:
                search = tree[stage]
                count += 1 + sum(max(len(search[side]["steps"]) - 1, 0) for side in ("max_chain", "min_chain"))
    return count


def report(generate_dir: Path) -> dict:
    stats = json.loads((generate_dir / "stats.json").read_text())
    trees = [json.loads(line) for line in (generate_dir / "trees.jsonl").read_text().splitlines()]
    seconds = stats["seconds"]
    total = seconds["total_s"]
    nodes = expansions(trees)
    return {
        "problems": stats["problems"],
        "nodes_expanded": nodes,
        "nodes_per_second": nodes / total,
        "tokens_generated": stats["tokens_generated"],
        "tokens_per_second": stats["tokens_generated"] / total,
        "wall_seconds": total,
        "share": {name.removesuffix("_s"): seconds[name] / total for name in ("sampling_s", "reward_s", "checking_s", "host_s")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="run `sphere generate` with this config first")
    parser.add_argument("--generate-dir", type=Path, help="a finished generation folder to report on")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args()
    if args.config:
        from sphere_jax.pipeline.config import load_run_config
        from sphere_jax.pipeline.loop import generate_only

        config = load_run_config(args.config, args.overrides)
        generate_only(config)
        args.generate_dir = Path(config.run_dir) / "generate"
    if args.generate_dir is None:
        parser.error("give --config or --generate-dir")
    result = report(args.generate_dir)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(json.dumps(result, indent=2))
    share = result["share"]
    verdict = "met" if share["host"] + share["checking"] < 0.10 else "not met"
    print(f"host + checking = {100 * (share['host'] + share['checking']):.1f}% of wall time (goal < 10%: {verdict})")


if __name__ == "__main__":
    main()
