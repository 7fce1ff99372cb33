"""List training problems that share a word n-gram with any evaluation problem.

Both sides are dataset specs (see ``sphere_jax.data.spec``). The script prints a summary with a
few examples and, with ``--output``, writes every match as JSON.

Usage:

    python scripts/decontamination_report.py --train gsm8k:train --eval gsm8k:test math500:test \\
        [--ngram 13] [--examples 5] [--output decontamination.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import time
from pathlib import Path

from sphere_jax.data import ContaminationMatch, Problem, find_contamination, load_problems
from sphere_jax.data.contamination import DEFAULT_NGRAM, words

logger = logging.getLogger("decontamination_report")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", nargs="+", required=True, help="Training set specs to check, e.g. gsm8k:train.")
    parser.add_argument("--eval", nargs="+", required=True, help="Evaluation set specs, e.g. gsm8k:test math500:test.")
    parser.add_argument("--ngram", type=int, default=DEFAULT_NGRAM, help="N-gram length in words (default: 13).")
    parser.add_argument("--examples", type=int, default=5, help="Matches printed as examples (default: 5).")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the summary and every match.")
    return parser.parse_args(argv)


def build_report(
    train_specs: list[str], eval_specs: list[str], ngram: int, examples: int
) -> tuple[dict[str, object], list[ContaminationMatch], dict[str, Problem]]:
    """Load the sets, find the matches and return the summary, the matches and the problems by id."""
    train = [problem for spec in train_specs for problem in load_problems(spec)]
    evaluation = [problem for spec in eval_specs for problem in load_problems(spec)]
    started = time.perf_counter()
    matches = find_contamination(train, evaluation, n=ngram)
    elapsed = time.perf_counter() - started

    by_id = {problem.id: problem for problem in [*train, *evaluation]}
    eval_source = {problem.id: f"{problem.source}:{problem.split}" for problem in evaluation}
    flagged_by_benchmark = collections.Counter()
    for match in matches:
        for benchmark in {eval_source[eval_id] for eval_id in match.all_eval_ids}:
            flagged_by_benchmark[benchmark] += 1
    eval_hit = {eval_id for match in matches for eval_id in match.all_eval_ids}
    eval_hit_by_benchmark = collections.Counter(eval_source[eval_id] for eval_id in eval_hit)

    summary = {
        "train": train_specs,
        "eval": eval_specs,
        "ngram": ngram,
        "train_problems": len(train),
        "eval_problems": len(evaluation),
        "train_problems_shorter_than_ngram": sum(len(words(problem.question)) < ngram for problem in train),
        "flagged_train_problems": len(matches),
        "flagged_train_problems_by_eval_set": dict(sorted(flagged_by_benchmark.items())),
        "eval_problems_hit": len(eval_hit),
        "eval_problems_hit_by_eval_set": dict(sorted(eval_hit_by_benchmark.items())),
        "search_seconds": round(elapsed, 3),
        "examples": [_example(match, by_id) for match in sorted(matches, key=lambda match: -match.shared_ngrams)[:examples]],
    }
    return summary, matches, by_id


def _example(match: ContaminationMatch, by_id: dict[str, Problem]) -> dict[str, object]:
    return {
        "train_id": match.train_id,
        "eval_id": match.eval_id,
        "shared_ngrams": match.shared_ngrams,
        "example_ngram": match.example_ngram,
        "train_question": by_id[match.train_id].question,
        "eval_question": by_id[match.eval_id].question,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    summary, matches, _ = build_report(args.train, args.eval, args.ngram, args.examples)

    print(f"{summary['flagged_train_problems']} of {summary['train_problems']} training problems share a "
          f"{args.ngram}-gram with {summary['eval_problems_hit']} of {summary['eval_problems']} evaluation problems.")
    for benchmark, count in summary["flagged_train_problems_by_eval_set"].items():
        print(f"  {benchmark}: {count} training problems flagged, "
              f"{summary['eval_problems_hit_by_eval_set'][benchmark]} of its problems hit")
    print(f"  training problems shorter than {args.ngram} words (never flagged): "
          f"{summary['train_problems_shorter_than_ngram']}")
    for example in summary["examples"]:
        print(f"\n{example['train_id']} ~ {example['eval_id']} ({example['shared_ngrams']} shared n-grams)")
        print(f"  shared: {example['example_ngram']!r}")
        print(f"  train:  {example['train_question']}")
        print(f"  eval:   {example['eval_question']}")

    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {"summary": summary, "matches": [match.to_dict() for match in matches]}
        args.output.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        logger.info("Wrote %d matches to %s", len(matches), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
