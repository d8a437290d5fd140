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
  gold(row) -> str | None          optional: a question row's gold answer (default: its `gold`
                                   field, or GSM8K's solution ending in `#### N`, as `extract`
                                   reads it); GOLD_FIELDS names the row fields it reads
  correct(answer, gold) -> bool    optional: whether an answer is right (default: `equal`;
                                   code: the program passes the gold tests in the sandbox)
  clean_question(text, max_chars) -> (question, reason or None)
                                   optional: in place of crescent/methods/cleaning.py's (which
                                   cuts at a line starting "Answer", say, where a multiple-choice
                                   question lists its "Answer choices:")
  revision: int                    optional: raised when the same text would now be read
                                   otherwise (default 1); in the key of every stage that reads
                                   with the format, so no entry read the old way is reused
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

    GOLD_FIELDS = ("gold", "answer")

    @classmethod
    def for_question(cls, record: dict):
        return cls

    @classmethod
    def gold(cls, row: dict) -> str | None:
        return gold_answer(cls, row)

    @classmethod
    def correct(cls, answer: str | None, gold: str) -> bool:
        return answer is not None and cls.equal(answer, gold)

    @staticmethod
    def training_response(response: str, answer: str, domain) -> str:
        from crescent.methods.extraction import strip_final_answer

        body = strip_final_answer(response).rstrip()
        return f"{body}\n{domain.final_answer_line.format(answer=answer)}".lstrip()


def for_question(answers, record: dict):
    """`answers` (an answer format) as it reads the answers to the question `record`."""
    bind = getattr(answers, "for_question", None)
    return bind(record) if bind else answers


def gold_answer(answers, row: dict) -> str | None:
    """A question row's gold answer as `answers` reads answers: its `gold` field, or GSM8K's
    `answer` whose last line is `#### N`; None when it has neither."""
    if "gold" in row:
        return answers.extract(str(row["gold"])) or str(row["gold"]).strip()
    solution = str(row.get("answer", ""))
    return answers.extract(solution) if "####" in solution else None


def gold_of(answers, row: dict) -> str | None:
    """`answers`'s gold answer of a question row (the default's for a format without one)."""
    make = getattr(answers, "gold", None)
    return make(row) if make else gold_answer(answers, row)


def is_correct(answers, answer: str | None, gold: str) -> bool:
    """Whether `answer` is right against `gold`, as `answers` decides it."""
    check = getattr(answers, "correct", None)
    return check(answer, gold) if check else answer is not None and answers.equal(answer, gold)


def training_response(answers, response: str, answer: str, domain) -> str:
    """The kept sample `response` (answer `answer`) as the model is trained on it."""
    make = getattr(answers, "training_response", AnswerFormat.training_response)
    return make(response, answer, domain)


def answer_format(name: str):
    """The registered answer format `name` (one line naming the known ones when there is none)."""
    return ANSWER_FORMATS.get(name)


def answer_type_key(cfg):
    """`domain.answer_type` as the keys of the stages that read with it hold it: the name, and
    the format's revision once it was raised."""
    revision = getattr(answer_format(cfg.domain.answer_type), "revision", 1)
    return cfg.domain.answer_type if revision == 1 else [cfg.domain.answer_type, revision]


def gold_answers(cfg) -> dict:
    """id -> gold answer (extracted as the domain reads answers) of `answers.input`'s questions,
    read as the answers stage reads them (same ids, same limit)."""
    from pathlib import Path

    from crescent.artefacts import load_questions
    from crescent.errors import CrescentError

    if not cfg.answers.input:
        raise CrescentError("audit: needs questions with known answers: set answers.input to a "
                            "JSON Lines file with a `gold` field per row, or GSM8K's "
                            "'${data:gsm8k/train.jsonl}'")
    path, reader = Path(cfg.answers.input), answer_format(cfg.domain.answer_type)
    fields = getattr(reader, "GOLD_FIELDS", ("gold", "answer"))
    golds = {}
    for row in load_questions(path, cfg.answers.limit, keep=fields):
        gold = gold_of(reader, row)
        if not gold:
            what = ("a `gold` field, or an `answer` ending in '#### <answer>'"
                    if fields == ("gold", "answer") else f"the fields {', '.join(fields)}")
            raise CrescentError(f"{path}: question id {row['id']!r} has no gold answer ({what})")
        golds[row["id"]] = gold
    return golds
