"""Vote rules over the k sampled answers of one question: which answer, if any, becomes the label.

A rule is registered in `VOTE_RULES` and selected by `voting.rule`; it is called as
`rule(answers, responses, cfg, seed, answer_format)` (the extracted answers, None for an
abstention; the responses; the `voting` config; a seed for tie-breaks; the domain's answer
format, whose `equal` groups answers) and returns a `Vote`.

`majority` (the method): answers are grouped by the domain's equivalence (each answer compared
with the first member of every group so far), the largest group wins if it holds at least
`min_agreement` of all k samples (abstentions count in the denominator) and at least
`min_votes` of them. The thresholds are checked first: a tie between groups that would fail
them anyway is `no_consensus`, not a tie.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from crescent.errors import CrescentError
from crescent.registry import VOTE_RULES


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
    details: dict = field(default_factory=dict)  # a rule's own counts (execution: crashes, ...)

    @property
    def kept(self) -> bool:
        return self.reason is None


def group_answers(answers: Sequence[str | None], equal) -> list[list[int]]:
    """Equivalence groups of sample indices in order of first appearance; abstentions (None)
    skipped. `equal` compares two answers (the domain's answer format's)."""
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        group = next((g for g in groups if equal(answers[g[0]], answer)), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return groups


def vote(answers: Sequence[str | None], responses: Sequence[str], cfg, seed: int,
         answer_format) -> Vote:
    """The vote of the rule `cfg.rule`, answers compared by `answer_format`."""
    return VOTE_RULES.get(cfg.rule)(answers, responses, cfg, seed, answer_format)


@VOTE_RULES.register("majority")
def majority(answers: Sequence[str | None], responses: Sequence[str], cfg, seed: int,
             answer_format) -> Vote:
    """Plurality over equivalence groups with agreement floors; ties dropped or broken by `seed`."""
    groups = group_answers(answers, answer_format.equal)
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
    chosen = representative(winners, answers, responses, cfg.representative, answer_format)
    return Vote(answers[chosen], votes, agreement, abstentions, None, winners, chosen)


def representative(winners: list[int], answers: Sequence[str | None],
                   responses: Sequence[str], rule: str, answer_format) -> int:
    """The winner whose response becomes the training target; ties go to the first sample."""
    if rule == "shortest":
        return min(winners, key=lambda i: len(responses[i]))
    if rule == "canonical":
        return min(winners, key=lambda i: answer_format.canonicality(answers[i]))
    return winners[0]


def counted_answers(record: dict, k: int, drop_truncated: bool, who: str,
                    key: str) -> tuple[list, list[bool]]:
    """A question's first k extracted answers as the vote counts them (with `drop_truncated`,
    a sample cut at max_tokens abstains: its final answer was never written), and which of
    them were cut; fewer than k samples is an error naming `who` and the `key` that asked."""
    extracted = record["extracted"][:k]
    if len(extracted) < k:
        raise CrescentError(f"{who} has {len(extracted)} samples, fewer than {key}={k}")
    truncated = list(record.get("truncated") or [False] * len(extracted))[:k]
    return [None if cut and drop_truncated else a for a, cut in zip(extracted, truncated)], \
        truncated
