"""Time load_problems on every bundled set and print a Markdown table.

Each spec is loaded ``--repeats`` times in this process. The table shows the first load, which
is cold because the grader's imports and caches are still empty, and the median of the others.

Usage:

    python scripts/benchmark_data_loading.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

from sphere_jax.data import BUILTIN_SETS, load_problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Loads per spec (default: 5).")
    args = parser.parse_args()

    print(f"Machine: {platform.machine()}, {platform.processor() or 'unknown CPU'}, Python {platform.python_version()}")
    print("| spec | problems | first load (s) | median of later loads (s) |")
    print("| --- | ---: | ---: | ---: |")
    for name, builtin in BUILTIN_SETS.items():
        for split in builtin.files:
            spec = f"{name}:{split}"
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                problems = load_problems(spec)
                seconds.append(time.perf_counter() - started)
            later = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
            print(f"| {spec} | {len(problems)} | {seconds[0]:.3f} | {later:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
