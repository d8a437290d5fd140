"""Majority vote over the k sampled answers of one question: keep only consensus, and pick its response.

Answers are grouped by mathematical equivalence (`answers_equal`, each answer compared with the
first member of every group so far), the largest group wins if it holds at least
`min_agreement` of all k samples (abstentions count in the denominator) and at least
`min_votes` of them. The thresholds are checked first: a tie between groups that would fail
them anyway is `no_consensus`, not a tie.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from crescent.infra.io import CrescentError
from crescent.methods.extraction import answers_equal, canonicality

TIE_BREAKS = ("drop", "seeded")
REPRESENTATIVES = ("first", "shortest", "canonical")


@dataclass
class Vote:
    """The outcome for one question. Dropped votes keep `votes` and `agreement` for the stats."""

    answer: str | None  # the winning group's representative answer; None when dropped
    votes: dict[str, int]  # one key per equivalence group (its first-seen answer string) -> count
    agreement: float  # largest group's count / number of samples (abstentions in the denominator)
    abstentions: int  # samples without an answer
    reason: str | None  # None when kept; else "abstained", "no_consensus" or "tie"
    winners: list[int]  # indices of the samples in the winning group; empty when dropped
    representative: int | None  # index of the sample kept as the training response

    @property
    def kept(self) -> bool:
        return self.reason is None


def group_answers(answers: Sequence[str | None]) -> list[list[int]]:
    """Equivalence groups of sample indices in order of first appearance; abstentions (None) skipped."""
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        group = next((g for g in groups if answers_equal(answers[g[0]], answer)), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return groups


def vote(answers: Sequence[str | None], responses: Sequence[str], cfg, seed: int) -> Vote:
    """Plurality over equivalence groups with agreement floors; ties dropped or broken by `seed`."""
    _check(cfg)
    groups = group_answers(answers)
    votes = {answers[g[0]]: len(g) for g in groups}
    abstentions = sum(a is None for a in answers)
    top = max((len(g) for g in groups), default=0)
    agreement = top / len(answers) if answers else 0.0

    def dropped(reason: str) -> Vote:
        return Vote(None, votes, agreement, abstentions, reason, [], None)

    if not groups:
        return dropped("abstained")
    if agreement < cfg.min_agreement or top < cfg.min_votes:
        return dropped("no_consensus")
    tied = [g for g in groups if len(g) == top]
    if len(tied) > 1 and cfg.tie_break == "drop":
        return dropped("tie")
    winners = random.Random(seed).choice(tied) if len(tied) > 1 else tied[0]
    chosen = _representative(winners, answers, responses, cfg.representative)
    return Vote(answers[chosen], votes, agreement, abstentions, None, winners, chosen)


def _representative(
    winners: list[int], answers: Sequence[str | None], responses: Sequence[str], rule: str
) -> int:
    """The winner whose response becomes the training target; ties go to the first sample."""
    if rule == "shortest":
        return min(winners, key=lambda i: len(responses[i]))
    if rule == "canonical":
        return min(winners, key=lambda i: canonicality(answers[i]))
    return winners[0]


def _check(cfg) -> None:
    for key, allowed in (("tie_break", TIE_BREAKS), ("representative", REPRESENTATIVES)):
        value = getattr(cfg, key)
        if value not in allowed:
            raise CrescentError(
                f"voting.{key}: unknown value {value!r}; expected one of {', '.join(allowed)}"
            )
