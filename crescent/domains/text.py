"""The `text` answer format: a short answer in words (a name, yes or no), compared as text."""

from __future__ import annotations

from crescent.domains import AnswerFormat
from crescent.methods import extraction
from crescent.registry import ANSWER_FORMATS


@ANSWER_FORMATS.register("text")
class TextAnswers(AnswerFormat):
    """The first line after the last final-answer marker, lowercased; equal when identical
    (sympy would read `paris` and `sapir` as the same product of symbols)."""

    extract = staticmethod(extraction.extract_text)

    @staticmethod
    def equal(a: str, b: str) -> bool:
        return a == b
