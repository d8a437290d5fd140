"""Domains: a domain is a bundle of its prompts (YAML under `conf/domain/`, or a plug-in's
config dir), its answer format (code: how a final answer is read from a chain of thought, when
two answers are the same, and optionally how a generated question is cleaned), registered in
`ANSWER_FORMATS` and selected by `domain.answer_type`, and optionally its own benchmarks (lm-eval
task folders named in `eval.include_path`).

An answer format is any object (a class with static methods will do) with
  extract(text) -> str | None      the final answer, normalised; None is an abstention
  equal(a, b) -> bool              whether two extracted answers are the same answer
  canonicality(answer) -> int      optional: lower ranks first for voting.representative=canonical
  clean_question(text, max_chars) -> (question, reason or None)
                                   optional: in place of crescent/methods/cleaning.py's (which
                                   cuts at a line starting "Answer", say, where a multiple-choice
                                   question lists its "Answer choices:")
and, registered with `options=` a dataclass, settings of its own in `domain.options`.
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
