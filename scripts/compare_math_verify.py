"""List every pair where sphere_jax's checker and math-verify disagree.

Two inputs:
- `--corpus tests/data/grader_cases.jsonl`: the grader corpus (fields gold, prediction,
  expected); the report also counts how often each checker matches the expected verdict.
- `--pairs FILE.jsonl`: real sampler pairs, one JSON object a line with the fields `output`
  (the full model completion) and `gold` (a GSM8K solution with `#### n`, a MATH solution with
  `\\boxed{}`, or a MATH-500 answer), or the per-problem records file
  (`<benchmark>.jsonl`) that `sphere eval` writes.
  Ours checks the answer that our extraction finds in the output, as the evaluation does.

math-verify (PyPI `math-verify`, the test extra) gets the gold answer extracted by
sphere_jax's extractors and wrapped in `$...$`, its documented gold form, and the prediction as
written (a bare corpus prediction is wrapped in `$...$` too). Review each disagreement listed;
the right verdict joins tests/data/grader_cases.jsonl. Run:

    python scripts/compare_math_verify.py --corpus tests/data/grader_cases.jsonl --out /tmp/disagreements.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from sphere_jax.grading import AnswerChecker, Verdict, extract_answer, gsm8k_gold, last_boxed


def gold_for_math_verify(gold: str) -> str:
    """Return the gold answer text wrapped in `$...$`, after GSM8K or boxed extraction."""
    if "\\boxed" in gold or "\\fbox" in gold:
        gold = last_boxed(gold) or gold
    elif "####" in gold:
        gold = gsm8k_gold(gold) or gold
    return f"${gold}$"


def prediction_for_math_verify(prediction: str) -> str:
    """Return model text as is, and wrap a bare answer (no `$`, no box) in `$...$`."""
    if "$" in prediction or "\\boxed" in prediction or "\\fbox" in prediction or "\n" in prediction:
        return prediction
    return f"${prediction}$"


def math_verify_verdicts(pairs: list[tuple[str, str]]) -> list[bool]:
    from math_verify import parse, verify

    verdicts = []
    for gold, prediction in pairs:
        try:
            verdicts.append(bool(verify(parse(gold_for_math_verify(gold)), parse(prediction_for_math_verify(prediction)))))
        except Exception as error:  # noqa: BLE001 - a crash in the reference counts as "not equal"
            print(f"math-verify failed on {gold[:60]!r} / {prediction[:60]!r}: {error!r}", file=sys.stderr)
            verdicts.append(False)
    return verdicts


def load_rows(args: argparse.Namespace) -> list[dict]:
    """Read corpus cases, or sampler pairs as (gold, full output, our extracted answer) rows.

    A pairs file may also be the per-problem records that `sphere eval` writes (`<benchmark>.jsonl`):
    each of a record's samples becomes one pair with the record's gold answer.
    """
    path = args.corpus or args.pairs
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if args.corpus is not None:
                rows.append(row)
                continue
            outputs = [sample["output"] for sample in row["samples"]] if "samples" in row else [row.get("output")]
            if "gold" not in row or any(output is None for output in outputs):
                raise SystemExit(f"{path}:{number}: each line needs output and gold (or an eval record with samples)")
            for output in outputs:
                rows.append({"gold": row["gold"], "prediction": output, "extracted": extract_answer(output)})
    return rows


def our_verdicts(rows: list[dict], checker: AnswerChecker) -> list[Verdict]:
    """Check corpus predictions as written, and sampler outputs through our answer extraction.

    An output with no extractable answer is "unparsable" without a check, as in the evaluation harness.
    """
    verdicts: list[Verdict | None] = [None] * len(rows)
    to_check = []
    for index, row in enumerate(rows):
        prediction = row["extracted"] if "extracted" in row else row["prediction"]
        if prediction is None:
            verdicts[index] = Verdict(equal=False, reason="unparsable")
        else:
            to_check.append((index, (row["gold"], prediction)))
    for (index, _), verdict in zip(to_check, checker.check_many([pair for _, pair in to_check]), strict=True):
        verdicts[index] = verdict
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", type=Path, help="grader corpus JSONL (gold, prediction, expected)")
    source.add_argument("--pairs", type=Path, help="sampler pairs JSONL (output, gold)")
    parser.add_argument("--out", type=Path, default=None, help="write the disagreements to this JSONL file")
    parser.add_argument("--workers", type=int, default=2, help="AnswerChecker worker processes")
    parser.add_argument("--deadline-s", type=float, default=2.0, help="per-check deadline in seconds")
    args = parser.parse_args()

    rows = load_rows(args)
    pairs = [(row["gold"], row["prediction"]) for row in rows]
    with AnswerChecker(workers=args.workers, deadline_s=args.deadline_s) as checker:
        ours = our_verdicts(rows, checker)
    counts = collections.Counter(verdict.reason for verdict in ours)
    theirs = math_verify_verdicts(pairs)

    disagreements = []
    for index, (row, verdict, reference) in enumerate(zip(rows, ours, theirs)):
        if verdict.equal == reference:
            continue
        record = {
            "index": index,
            "gold": row["gold"][-200:],
            "prediction": row["prediction"][-200:],
            "extracted": row.get("extracted"),
            "ours": verdict.reason,
            "math_verify": "equal" if reference else "not_equal",
        }
        if "expected" in row:
            record["expected"] = row["expected"]
            record["note"] = row.get("note", "")
        disagreements.append(record)
        print(json.dumps(record, ensure_ascii=False))

    print(f"\npairs: {len(rows)}; disagreements: {len(disagreements)}; our verdicts: {counts}")
    if args.corpus is not None:
        ours_right = sum(verdict.equal == row["expected"] for row, verdict in zip(rows, ours))
        theirs_right = sum(reference == row["expected"] for row, reference in zip(rows, theirs))
        print(f"matching the expected verdict: ours {ours_right}/{len(rows)}, math-verify {theirs_right}/{len(rows)}")
    if args.out is not None:
        with args.out.open("w") as handle:
            for record in disagreements:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
