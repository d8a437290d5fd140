"""Domains: a domain's prompts are YAML under `conf/domain/`; its answer semantics (how a final
answer is read from a chain of thought, and when two answers are the same) are an answer
format, registered in `ANSWER_FORMATS` and selected by `domain.answer_type`.

An answer format is any object (a class with static methods will do) with
  extract(text) -> str | None      the final answer, normalised; None is an abstention
  equal(a, b) -> bool              whether two extracted answers are the same answer
  canonicality(answer) -> int      optional: lower ranks first for voting.representative=canonical
"""

from __future__ import annotations

from crescent.registry import ANSWER_FORMATS


class AnswerFormat:
    """Base for answer formats: every answer form is as canonical as any other."""

    @staticmethod
    def canonicality(answer: str) -> int:
        return 0


def answer_format(name: str):
    """The registered answer format `name` (one line naming the known ones when there is none)."""
    return ANSWER_FORMATS.get(name)
