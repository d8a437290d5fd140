"""Majority voting: equivalence groups, abstentions, threshold edges, ties and representatives."""

from __future__ import annotations

from dataclasses import replace

import pytest

from crescent.config import VotingConfig
from crescent.domains.math import MathAnswers as MATH
from crescent.errors import CrescentError
from crescent.methods.voting import group_answers, vote

CFG = VotingConfig(k=4, min_agreement=0.5, min_votes=2, tie_break="drop", representative="first")


def math_vote(answers, responses, cfg, seed):
    """The vote over answers of the math format."""
    return vote(answers, responses, cfg, seed, MATH)


def responses(n: int) -> list[str]:
    return [f"response {i}" for i in range(n)]


def test_equivalent_answers_form_one_group_in_order_of_first_appearance():
    answers = ["0.5", "3", "1/2", None, r"\frac{1}{2}", "3.0", "7"]
    assert group_answers(answers, MATH.equal) == [[0, 2, 4], [1, 5], [6]]


def test_group_answers_of_abstentions_only_is_empty():
    assert group_answers([None, None], MATH.equal) == []


def test_majority_over_equivalence_groups():
    result = math_vote(["0.5", "1/2", "2", r"\frac{1}{2}"], responses(4), CFG, seed=0)
    assert result.kept
    assert result.answer == "0.5"
    assert result.votes == {"0.5": 3, "2": 1}
    assert result.agreement == 0.75
    assert result.winners == [0, 1, 3]
    assert result.representative == 0
    assert result.abstentions == 0


def test_abstentions_count_in_the_denominator():
    result = math_vote(["5", "5", None, None], responses(4), CFG, seed=0)
    assert result.kept
    assert result.agreement == 0.5
    assert result.abstentions == 2
    assert result.votes == {"5": 2}


def test_abstentions_can_sink_a_majority_of_the_answers_given():
    result = math_vote(["5", "5", None, None, None], responses(5), CFG, seed=0)
    assert result.reason == "no_consensus"
    assert result.agreement == 0.4
    assert result.answer is None and result.winners == [] and result.representative is None


def test_all_abstained():
    result = math_vote([None] * 4, responses(4), CFG, seed=0)
    assert result.reason == "abstained"
    assert not result.kept
    assert result.votes == {}
    assert result.agreement == 0.0
    assert result.abstentions == 4


@pytest.mark.parametrize(
    "answers, min_agreement, kept",
    [
        (["1", "1", "2", "3"], 0.5, True),  # 2/4 == 0.5: exactly at the floor
        (["1", "1", "2", "3", "4"], 0.5, False),  # 2/5 == 0.4
        (["1", "1", "1", "2", "3"], 0.6, True),  # 3/5 == 0.6
        (["1", "1", "2", "3"], 0.51, False),
        (["1", "1", "1", "1"], 1.0, True),
        (["1", "1", "1", None], 1.0, False),
    ],
)
def test_min_agreement_edge(answers, min_agreement, kept):
    cfg = replace(CFG, min_agreement=min_agreement, min_votes=1)
    result = math_vote(answers, responses(len(answers)), cfg, seed=0)
    assert result.kept is kept
    assert result.reason == (None if kept else "no_consensus")


@pytest.mark.parametrize("min_votes, kept", [(2, True), (3, True), (4, False)])
def test_min_votes_edge(min_votes, kept):
    cfg = replace(CFG, min_agreement=0.0, min_votes=min_votes)
    result = math_vote(["8", "8", "8", "9", None, None], responses(6), cfg, seed=0)
    assert result.kept is kept
    assert result.reason == (None if kept else "no_consensus")


def test_single_sample_passes_only_with_min_votes_one():
    assert math_vote(["4"], ["r"], replace(CFG, min_votes=1), seed=0).kept
    assert math_vote(["4"], ["r"], CFG, seed=0).reason == "no_consensus"


def test_tie_is_dropped():
    result = math_vote(["1", "1", "2", "2"], responses(4), CFG, seed=0)
    assert result.reason == "tie"
    assert result.answer is None and result.winners == [] and result.representative is None
    assert result.votes == {"1": 2, "2": 2}
    assert result.agreement == 0.5


def test_tie_below_the_floors_is_no_consensus():
    result = math_vote(["1", "2", "3", "4"], responses(4), CFG, seed=0)
    assert result.reason == "no_consensus"


def test_seeded_tie_break_is_deterministic_and_depends_on_the_seed():
    cfg = replace(CFG, tie_break="seeded", min_agreement=0.0, min_votes=1)
    answers = [str(i) for i in range(8)]  # an eight-way tie
    picks = {seed: math_vote(answers, responses(8), cfg, seed=seed).answer for seed in range(20)}
    assert all(math_vote(answers, responses(8), cfg, seed=s).answer == picks[s] for s in range(20))
    assert len(set(picks.values())) > 1
    assert all(pick in answers for pick in picks.values())


def test_seeded_tie_break_keeps_the_whole_picked_group():
    cfg = replace(CFG, tie_break="seeded")
    result = math_vote(["1", "2", "1.0", "2/1"], responses(4), cfg, seed=3)
    assert result.kept
    assert result.winners in ([0, 2], [1, 3])
    assert result.representative == result.winners[0]
    assert result.agreement == 0.5


def test_representative_first():
    result = math_vote(["3", "3", "3", "5"], ["long answer", "short", "mid one", "x"], CFG, seed=0)
    assert result.representative == 0


def test_representative_shortest_ties_go_to_the_first():
    cfg = replace(CFG, representative="shortest")
    result = math_vote(["3", "3", "3", "5"], ["long answer", "short", "other", "x"], cfg, seed=0)
    assert result.representative == 1
    assert result.answer == "3"


def test_representative_canonical():
    cfg = replace(CFG, representative="canonical")
    answers = [r"\frac{1}{2}", "1/2", "0.5", "0.50", "7"]
    result = math_vote(answers, responses(5), cfg, seed=0)
    assert result.winners == [0, 1, 2, 3]
    assert result.representative == 2
    assert result.answer == "0.5"
    assert result.votes == {r"\frac{1}{2}": 4, "7": 1}


def test_unknown_rule_names_the_key():
    # tie_break and representative are Enums, refused when the config is composed
    # (tests/test_config.py); the rule is open to plug-ins, so the registry refuses it.
    with pytest.raises(CrescentError, match="voting.rule='bogus': no such vote rule"):
        math_vote(["1", "1"], responses(2), replace(CFG, rule="bogus"), seed=0)


def test_the_domain_decides_which_answers_agree():
    # math reads "1/2" and "0.5" as one answer; the text format compares words, so the same
    # samples have no majority there.
    from crescent.domains import answer_format

    answers = ["1/2", "0.5", "0.5000", "2"]
    assert vote(answers, responses(4), CFG, 0, answer_format("math")).answer == "1/2"
    assert vote(answers, responses(4), CFG, 0, answer_format("text")).reason == "no_consensus"
    assert group_answers(["paris", "sapir", "Paris".lower()], answer_format("text").equal) == \
        [[0, 2], [1]]
