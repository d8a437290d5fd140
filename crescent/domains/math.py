"""The `math` answer format: numbers and LaTeX, compared by value and by math-verify."""

from __future__ import annotations

from crescent.domains import AnswerFormat
from crescent.methods import extraction
from crescent.registry import ANSWER_FORMATS


@ANSWER_FORMATS.register("math")
class MathAnswers(AnswerFormat):
    """Numbers are canonical (`1,000.50` -> `1000.5`), other answers normalised LaTeX;
    crescent/methods/extraction.py says how each is read and compared."""

    extract = staticmethod(extraction.extract_math)
    equal = staticmethod(extraction.answers_equal)
    canonicality = staticmethod(extraction.canonicality)
