"""PNG plots and the summary table of a run, made from its state.json and metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _evaluations(state: dict[str, Any]) -> list[tuple[str, dict[str, dict[str, float]]]]:
    done = state["done"]
    points = [("base", done["eval:base"])] if "eval:base" in done else []
    index = 0
    while f"eval:{index}" in done:
        points.append((f"iter{index}", done[f"eval:{index}"]))
        index += 1
    return points


def write_plots(run_dir: Path, state: dict[str, Any]) -> list[Path]:
    """Write plots/accuracy.png and plots/dpo.png; return the files written."""
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    points = _evaluations(state)
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        benchmarks = sorted({b for _, result in points for b in result})
        for bench in benchmarks:
            xs = [label for label, result in points if bench in result]
            ys = [100 * next(iter(result[bench].values())) for label, result in points if bench in result]
            ax.plot(xs, ys, marker="o", label=bench)
        ax.set_xlabel("policy")
        ax.set_ylabel("pass@1 (%)")
        ax.set_title("Accuracy per benchmark over iterations")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=100)
        plt.close(fig)
        written.append(out / "accuracy.png")
    train = []
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.exists():
        train = [r for r in map(json.loads, metrics_path.read_text().splitlines()) if r["kind"] == "train"]
    if train:
        fig, (loss_ax, margin_ax) = plt.subplots(1, 2, figsize=(10, 4))
        steps = list(range(1, len(train) + 1))
        loss_ax.plot(steps, [r["loss"] for r in train], marker=".")
        loss_ax.set_title("DPO loss")
        margin_ax.plot(steps, [r["rewards/margins"] for r in train], marker=".", color="tab:green")
        margin_ax.set_title("rewards/margins")
        for ax in (loss_ax, margin_ax):
            ax.set_xlabel("DPO step (all iterations)")
        fig.tight_layout()
        fig.savefig(out / "dpo.png", dpi=100)
        plt.close(fig)
        written.append(out / "dpo.png")
    return written


def write_summary(run_dir: Path, config: Any, state: dict[str, Any]) -> str:
    """Format and save summary.md: stage counts, pairs, accuracy before and after, time per phase."""
    done = state["done"]
    lines = [f"# sphere run: {run_dir}", ""]
    lines += ["| iteration | problems | self-gen | self-corr | diversity | inverted | pairs | max right | min right |",
              "|---|---|---|---|---|---|---|---|---|"]
    index = 0
    while f"generate:{index}" in done:
        stats = done[f"generate:{index}"]
        routes = stats["problems_per_route"]
        lines.append(
            f"| {index} | {stats['problems']} | {routes['self_generation']} | {routes['self_correction']} | "
            f"{routes['diversity_induction']} | {routes['inverted']} | {stats['pairs']} | "
            f"{stats['max_chain_correct']} | {stats['min_chain_correct']} |"
        )
        index += 1
    points = _evaluations(state)
    if points:
        lines += ["", "| benchmark | " + " | ".join(label for label, _ in points) + " |",
                  "|---|" + "---|" * len(points)]
        for bench in sorted({b for _, result in points for b in result}):
            cells = [f"{100 * next(iter(result[bench].values())):.1f}%" if bench in result else "-" for _, result in points]
            lines.append(f"| {bench} | " + " | ".join(cells) + " |")
    lines += ["", "| phase | seconds |", "|---|---|"]
    lines += [f"| {phase} | {seconds} |" for phase, seconds in state["seconds"].items()]
    text = "\n".join(lines) + "\n"
    (run_dir / "summary.md").write_text(text)
    return text
