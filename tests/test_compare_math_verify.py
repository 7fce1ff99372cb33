"""scripts/compare_math_verify.py reads sampler pairs and `sphere eval` records, and checks extracted answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compare_math_verify.py"


def test_pairs_from_eval_records_and_plain_lines(tmp_path):
    record = {
        "id": "gsm8k:test:0",
        "gold": "18",
        "samples": [
            {"output": "She sells 16 - 3 - 4 = 9 eggs for $2 each.\n\nSo she makes \\boxed{18} dollars."},
            {"output": "She sells some eggs at the market and earns money."},
        ],
    }
    plain = {"output": "The total is 1,000 apples, so the answer is $\\boxed{1000}$.", "gold": "#### 1,000"}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(record) + "\n" + json.dumps(plain) + "\n")
    out = tmp_path / "disagreements.jsonl"

    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--pairs", str(pairs), "--out", str(out), "--workers", "1"],
        capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("pairs: 3; disagreements: 0;"), summary
    # Two extracted answers are checked and equal. The output without an answer is unparsable, unchecked.
    assert "'equal': 2" in summary, summary
    assert "'unparsable': 1" in summary, summary
    assert out.read_text() == ""
