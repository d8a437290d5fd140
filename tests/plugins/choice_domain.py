"""A multiple-choice domain: its answer format reads a letter, its cleaning hook keeps the
"Answer choices:" line that the built-in cleaning cuts (a line starting "Answer" starts a
solution there), and `domain.options.letters` says which letters a question offers.

    plugins=[tests.plugins.choice_domain] hydra.searchpath=[file://tests/plugin_conf]
    domain=choice

Its prompts are tests/plugin_conf/domain/choice.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crescent.domains import AnswerFormat
from crescent.registry import ANSWER_FORMATS


@dataclass
class ChoiceOptions:
    letters: str = "ABCD"  # the choices a question offers


# Where a solution starts: the answer line itself, not the list of choices.
_SOLUTION = re.compile(r"^\s*\**\s*(?:solution|explanation|correct answer|the answer is)\b",
                       re.IGNORECASE | re.MULTILINE)
_LABEL = re.compile(r"^\s*\**\s*question\s*\d*\s*[:.]\s*\**\s*", re.IGNORECASE)


@ANSWER_FORMATS.register("choice", options=ChoiceOptions)
class Choice(AnswerFormat):
    """The answer is the last choice letter written as (X) or "answer is X"."""

    @staticmethod
    def extract(text: str) -> str | None:
        found = re.findall(r"\(([A-Z])\)|answer is:?\s*\(?([A-Z])\b", text)
        return (found[-1][0] or found[-1][1]) if found else None

    @staticmethod
    def equal(a: str, b: str) -> bool:
        return a == b

    @staticmethod
    def clean_question(text: str, max_chars: int) -> tuple[str, str | None]:
        cut = _SOLUTION.search(text)
        body = " ".join(_LABEL.sub("", text[: cut.start()] if cut else text).split())
        if not re.search(r"answer choices:", body, re.IGNORECASE) or "(A)" not in body:
            return body, "no_choices"
        if len(body) > max_chars:
            return body, "too_long"
        return body, None
