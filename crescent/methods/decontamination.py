"""Benchmark decontamination: word 13-gram overlap of generated questions with test sets.

Text is lowercased and split into runs of letters and digits (punctuation, LaTeX markup and
spacing do not hide a copy), the same normalisation for both sides. A question's overlap with
a benchmark is the share of its n-grams that occur anywhere in that benchmark's questions; a
question shorter than n words has no n-grams and is never flagged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from crescent.errors import CrescentError
from crescent.infra.io import read_jsonl

_WORD = re.compile(r"[a-z0-9]+")
# GSM8K, MATH and HumanEval name the question differently
_QUESTION_FIELDS = ("question", "problem", "prompt")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _rows(path: Path):
    """A benchmark's rows: JSON Lines, gzipped or not (HumanEval ships gzipped)."""
    if path.suffix != ".gz":
        return read_jsonl(path)
    import gzip
    import json

    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Benchmarks:
    """The n-grams of every question of some benchmark test sets, by set name."""

    def __init__(self, paths: Sequence[Path], n: int = 13):
        self.n = n
        self.grams: dict[str, set[tuple[str, ...]]] = {}
        for path in paths:
            if not path.exists():
                from crescent.infra.data import missing

                raise CrescentError(f"answers.decontaminate: {missing(path)}")
            grams: set[tuple[str, ...]] = set()
            for row in _rows(path):
                text = next((row[f] for f in _QUESTION_FIELDS if f in row), None)
                if text is None:
                    raise CrescentError(f"{path}: a row has none of the fields {_QUESTION_FIELDS}")
                grams |= ngrams(text, n)
            self.grams[str(path.parent.name + "/" + path.name)] = grams

    def worst(self, question: str) -> tuple[float, str | None]:
        """The highest overlap share with any benchmark, and that benchmark's name."""
        own = ngrams(question, self.n)
        best, name = 0.0, None
        for bench, grams in self.grams.items():
            share = len(own & grams) / len(own) if own else 0.0
            if share > best:
                best, name = share, bench
        return best, name
