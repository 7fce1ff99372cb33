"""Measure the load time and peak host memory of `load_model`, cold and warm, each in a fresh process.

Cold: an empty cache directory, so the load joins the packaged GGUF chunks, checks their sha256,
converts the GGUF file to fp32 safetensors and then reads those. Warm: the same cache directory
again, so the load reads the converted safetensors only.

Each load runs in a child process. The child samples its own /proc/self/status every few
milliseconds and, at each new RSS high, records the innermost sphere_jax, safetensors, gguf or
benchmark frame of the main thread, so the report names the step the peak comes from. The kernel's exact peak
(`ru_maxrss`) is reported next to the sampled one.

    python scripts/bench_load.py [--source packaged:qwen2.5-coder-0.5b-instruct] [--warm-runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SAMPLE_SECONDS = 0.005
_STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile")


def read_status() -> dict[str, int]:
    """Return VmRSS, RssAnon and RssFile of this process in bytes."""
    text = Path("/proc/self/status").read_text()
    return {field: int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024 for field in _STATUS_FIELDS}


def innermost_frame(frame) -> str:
    """Name the innermost frame of a stack that belongs to sphere_jax, safetensors, gguf or this script."""
    while frame is not None:
        path = frame.f_code.co_filename
        if any(part in path for part in ("sphere_jax", "safetensors", "gguf", Path(__file__).name)):
            return f"{Path(path).name}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "interpreter start-up"


class PeakSampler(threading.Thread):
    """Sample this process's RSS and remember where the main thread was at each new high."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.main_id = threading.main_thread().ident
        self.peak = read_status()
        self.peak_anon = self.peak["RssAnon"]
        self.peak_file = self.peak["RssFile"]
        self.peak_where = "before load"
        self.peak_anon_where = "before load"
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            status = read_status()
            self.peak_file = max(self.peak_file, status["RssFile"])
            if status["RssAnon"] > self.peak_anon:
                self.peak_anon = status["RssAnon"]
                self.peak_anon_where = innermost_frame(sys._current_frames().get(self.main_id))
            if status["VmRSS"] > self.peak["VmRSS"]:
                self.peak = status
                self.peak_where = innermost_frame(sys._current_frames().get(self.main_id))


def run_child(source: str, cache_dir: str) -> None:
    """Load `source` once with `cache_dir` and print one JSON line of measurements."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax

    from sphere_jax.weights.load import load_model

    jax.numpy.zeros(1).block_until_ready()  # start the backend, so its memory counts as baseline
    baseline = read_status()
    sampler = PeakSampler()
    sampler.start()
    started = time.perf_counter()
    loaded = load_model(source, cache_dir=Path(cache_dir))
    jax.block_until_ready(jax.tree.leaves(loaded.model))
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    weights_bytes = sum(f.stat().st_size for f in loaded.folder.glob("*.safetensors"))
    result = {
        "seconds": seconds,
        "baseline_rss": baseline["VmRSS"],
        "peak_rss_kernel": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "sampled_peak": sampler.peak,
        "sampled_peak_where": sampler.peak_where,
        "peak_anon": sampler.peak_anon,
        "peak_anon_where": sampler.peak_anon_where,
        "peak_file": sampler.peak_file,
        "after_load": read_status(),
        "weights_bytes": weights_bytes,
        "folder": str(loaded.folder),
    }
    print("RESULT " + json.dumps(result), flush=True)


def measure(source: str, cache_dir: Path) -> dict:
    """Run one load in a fresh Python process and return its measurements."""
    command = [sys.executable, __file__, "--child", "--source", source, "--cache-dir", str(cache_dir)]
    completed = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"load in child process failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def gib(value: int) -> str:
    return f"{value / 1024**3:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="packaged:qwen2.5-coder-0.5b-instruct", help="model to load (load_model source)")
    parser.add_argument("--warm-runs", type=int, default=2, help="number of warm loads after the cold one")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.source, args.cache_dir)
        return

    scratch = Path(tempfile.mkdtemp(prefix="sphere_jax_bench_load_"))
    try:
        runs = [("cold", measure(args.source, scratch))]
        for _ in range(args.warm_runs):
            runs.append(("warm", measure(args.source, scratch)))
    finally:
        shutil.rmtree(scratch)

    weights = runs[0][1]["weights_bytes"]
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.1f} GiB RAM, "
          f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    print(f"source: {args.source}; converted weights (sum of *.safetensors): {gib(weights)} GiB")
    print()
    print(
        "| run | seconds | baseline RSS GiB | peak RSS GiB | peak / weights | at the peak: anonymous + file-backed GiB "
        "| code at the peak | max anonymous GiB | code at the anonymous max |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, run in runs:
        peak, at_peak = run["peak_rss_kernel"], run["sampled_peak"]
        print(
            f"| {name} | {run['seconds']:.1f} | {gib(run['baseline_rss'])} | {gib(peak)} | {peak / weights:.2f} | "
            f"{gib(at_peak['RssAnon'])} + {gib(at_peak['RssFile'])} | `{run['sampled_peak_where']}` | "
            f"{gib(run['peak_anon'])} | `{run['peak_anon_where']}` |"
        )

if __name__ == "__main__":
    main()
