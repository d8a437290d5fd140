"""The vote rule `execution`: consensus among programs is agreement of behaviour.

Each of a question's k programs (the `code` answer format's answers) runs in the sandbox on the
question's calls: its docstring's examples and the test inputs the model wrote for it
(crescent/domains/code.py); programs that returned the same results on
every call form a group, as AlphaCode clusters samples and MBR-exec picks among them. A sample
without a program, and a program that returned no value on any call (an exception, a timeout,
a function or object shown only by its address) or did not load, abstains. The largest group
wins under `majority`'s floors and tie rule (min_agreement of all k, min_votes); the label is its
representative's program. The vote's `details` count what happened: no program, not loaded,
failed on every call, no call to run (a question without examples), and the calls that timed
out, raised or returned an opaque value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from crescent.methods.voting import Vote, majority
from crescent.registry import VOTE_RULES


class _SameBehaviour:
    """Behaviour keys are equal when identical."""

    @staticmethod
    def equal(a: str, b: str) -> bool:
        return a == b

    @staticmethod
    def canonicality(answer: str) -> int:
        return 0


@VOTE_RULES.register("execution")
def execution(answers: Sequence[str | None], responses: Sequence[str], cfg, seed: int,
              answer_format) -> Vote:
    """Majority over behaviour groups; the winner's program is the answer."""
    if not hasattr(answer_format, "behaviour"):
        from crescent.errors import CrescentError

        raise CrescentError("voting.rule=execution runs programs: it needs an answer format "
                            "that does (domain=code, domain.answer_type=code)")
    details: Counter = Counter()
    keys: list[str | None] = []
    for program in answers:
        if program is None:
            details["no_program"] += 1
            keys.append(None)
            continue
        ran = answer_format.behaviour(program)
        if ran is None:  # a question with no example call: nothing to agree on
            details["no_calls"] += 1
            keys.append(None)
            continue
        details.update(status for status, _, _ in ran.results if status != "ok")
        if not ran.loaded:
            details["not_loaded"] += 1
        elif not ran.any_ok:
            details["failed_every_call"] += 1
        keys.append(ran.key if ran.loaded and ran.any_ok else None)
    vote = majority(keys, responses, cfg, seed, _SameBehaviour)
    answer = answers[vote.representative] if vote.kept else None
    return replace(vote, answer=answer, details=dict(details))
