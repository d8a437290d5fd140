"""Extraction against reference solutions nobody here wrote: GSM8K and MATH-500 test splits."""

from __future__ import annotations

import json

from crescent.methods.extraction import answers_equal, extract_answer
from tests.conftest import DATA


def _rows(name: str) -> list[dict]:
    with open(DATA / name / "test.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _score(cases: list[tuple[str, str]], floor: float) -> None:
    """Extract from every chain of thought, compare with its gold answer, print the misses."""
    misses = []
    for chain, gold in cases:
        got = extract_answer(chain)
        if got is None or not answers_equal(got, gold):
            misses.append(f"gold {gold!r} got {got!r} from ...{chain[-120:]!r}")
    accuracy = 1 - len(misses) / len(cases)
    summary = f"{accuracy:.2%} of {len(cases)} ({len(misses)} misses)"
    print("\n" + summary, *misses, sep="\n  ")
    first = "\n".join(misses[:10])
    assert accuracy >= floor, f"{summary}, below {floor:.0%}; first misses:\n{first}"


def test_gsm8k_gold_chains_yield_their_answer():
    rows = _rows("gsm8k")
    assert len(rows) == 1319
    # The chain of thought alone, without its `#### N` line, must yield N.
    cases = [tuple(part.strip() for part in row["answer"].rsplit("####", 1)) for row in rows]
    _score(cases, floor=0.97)


def test_math500_boxed_answer_matches_the_final_line():
    rows = _rows("math500")
    assert len(rows) == 500
    # The solution without its trailing `The answer is: X`, so the \boxed{} must be found and parsed.
    cases = [
        tuple(part.strip() for part in row["answer"].rsplit("The answer is:", 1)) for row in rows
    ]
    _score(cases, floor=0.99)
