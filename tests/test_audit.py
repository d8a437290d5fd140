"""The vote audit (slow): real samples of the embedded model on questions with known answers,
re-voted at every k and floor; the precision, kept count, pass@k and single-sample accuracy it
prints equal a count by hand over samples.jsonl and the gold answers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from crescent.infra.io import read_json, read_jsonl
from tests.conftest import DATA, run_cli

# Easy questions the 135M model often gets right, each asked twice: once with its true answer
# and once with a wrong one, so that kept labels are both right and wrong.
EASY = [("What is 2 + 3?", 5), ("What is 10 - 4?", 6), ("What is 3 times 3?", 9)]
QUESTIONS = [{"id": f"{i}{tag}", "question": q, "gold": gold if tag == "t" else gold + 100}
             for i, (q, gold) in enumerate(EASY) for tag in ("t", "w")]
K = 3
RUN = ["stages=[answers,audit]", "answers.input=questions.jsonl", "engine=hf",
       f"answers.samples={K}", f"voting.k={K}", "answers.sampling.max_tokens=64",
       "answers.sampling.temperature=0.8", "voting.drop_truncated=false",
       f"eval.data_dir={DATA}", "logger=none", "cache_dir=null", "hydra.run.dir=run"]


def _cell(table: str, k: int, floor: int) -> tuple[int, str]:
    """(kept, precision) of one row of the printed audit table."""
    row = re.search(rf"^\| {k} \| {floor} of {k} \| (\d+) \| [^|]+ \| ([^|]+) \|$", table,
                    re.MULTILINE)
    assert row, f"no row for k={k}, floor={floor} in\n{table}"
    return int(row.group(1)), row.group(2).strip().strip("*").split(" ")[0]


@pytest.mark.slow
def test_audit_precision_equals_a_hand_count(tmp_path):
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    result = run_cli(*RUN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    gold = {q["id"]: str(q["gold"]) for q in QUESTIONS}
    samples = list(read_jsonl(run / "answers" / "samples.jsonl"))
    assert len(samples) == len(QUESTIONS)
    table = (run / "audit" / "audit.md").read_text()
    audit = read_json(run / "audit" / "audit.json")

    right = {r["id"]: [a == gold[r["id"]] for a in r["extracted"]] for r in samples}
    share = sum(sum(v) / K for v in right.values()) / len(samples)
    assert audit["sample_accuracy"]["value"] == pytest.approx(share)
    for k in range(1, K + 1):
        passed = sum(any(v[:k]) for v in right.values()) / len(samples)
        assert audit["by_k"][k - 1]["pass"]["value"] == pytest.approx(passed)
        for floor in range(1, k + 1):
            kept = correct = 0
            for r in samples:
                counts = Counter(a for a in r["extracted"][:k] if a is not None).most_common()
                if not counts or counts[0][1] < floor or (len(counts) > 1 and
                                                          counts[1][1] == counts[0][1]):
                    continue  # no answer, below the floor, or a tie (dropped)
                kept += 1
                correct += counts[0][0] == gold[r["id"]]
            shown_kept, shown_precision = _cell(table, k, floor)
            assert shown_kept == kept
            assert shown_precision == (f"{correct / kept:.3f}" if kept else "-"), (k, floor)
    # The wrong-gold twin of a question is never right where its true twin is.
    assert not any(right[f"{i}t"][j] and right[f"{i}w"][j] for i in range(len(EASY))
                   for j in range(K))

    # crescent-report renders the same table and the precision-vs-kept-share plot.

    report = subprocess.run([sys.executable, "-m", "crescent.report", str(run)], cwd=tmp_path,
                            capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stderr
    assert "vote audit" in report.stdout and table.splitlines()[2] in report.stdout
    assert [p.stat().st_size > 0 for p in (run / "report").glob("*_audit.png")] == [True]
