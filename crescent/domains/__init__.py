"""Domains: a domain is a bundle of its prompts (YAML under `conf/domain/`, or a plug-in's
config dir), its answer format (code: how a final answer is read from a chain of thought, when
two answers are the same, and optionally how a generated question is cleaned), registered in
`ANSWER_FORMATS` and selected by `domain.answer_type`, and optionally its own benchmarks (lm-eval
task folders named in `eval.include_path`).

An answer format is any object (a class with static methods will do) with
  extract(text) -> str | None      the final answer, normalised; None is an abstention
  equal(a, b) -> bool              whether two extracted answers are the same answer
  canonicality(answer) -> int      optional: lower ranks first for voting.representative=canonical
  for_question(record) -> format   optional: the format as it reads answers to one question (a
                                   question record: id, question); code's knows the function
                                   and its example calls
  training_response(response, answer, domain) -> str
                                   optional: the kept sample as the model is trained on it
                                   (default: its reasoning, then `domain.final_answer_line`)
  clean_question(text, max_chars) -> (question, reason or None)
                                   optional: in place of crescent/methods/cleaning.py's (which
                                   cuts at a line starting "Answer", say, where a multiple-choice
                                   question lists its "Answer choices:")
and, registered with `options=` a dataclass, settings of its own in `domain.options`.
"""

from __future__ import annotations

from crescent.registry import ANSWER_FORMATS


class AnswerFormat:
    """Base for answer formats: every answer form is as canonical as any other, a question
    changes nothing in how its answers are read, and the training response ends in the
    domain's final-answer line."""

    @staticmethod
    def canonicality(answer: str) -> int:
        return 0

    @classmethod
    def for_question(cls, record: dict):
        return cls

    @staticmethod
    def training_response(response: str, answer: str, domain) -> str:
        from crescent.methods.extraction import strip_final_answer

        body = strip_final_answer(response).rstrip()
        return f"{body}\n{domain.final_answer_line.format(answer=answer)}".lstrip()


def for_question(answers, record: dict):
    """`answers` (an answer format) as it reads the answers to the question `record`."""
    bind = getattr(answers, "for_question", None)
    return bind(record) if bind else answers


def training_response(answers, response: str, answer: str, domain) -> str:
    """The kept sample `response` (answer `answer`) as the model is trained on it."""
    make = getattr(answers, "training_response", AnswerFormat.training_response)
    return make(response, answer, domain)


def answer_format(name: str):
    """The registered answer format `name` (one line naming the known ones when there is none)."""
    return ANSWER_FORMATS.get(name)
