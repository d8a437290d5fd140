"""Preference pairs from the vote: the samples Crescent already drew, used a second time.

For a question the vote kept, a sample in the winning group is "chosen" and a sample with another
answer, or none (an abstention, a truncated sample that did not vote), is "rejected": no new
generation and no judge (self-consistency preference optimisation, ScPO). Pair i takes the i-th
winner (the representative first) and the i-th loser, in sample order, for as many pairs as
`voting.pairs` asks and the question has losers. Each pair carries its margin: the vote share of
the chosen answer minus that of the rejected one (0 for no answer), as ScPO weights its loss.

Rows are TRL's conversational preference format: `prompt`, `chosen` and `rejected` are message
lists, so `prefs.jsonl` is also what TRL's DPOTrainer reads.
"""

from __future__ import annotations


def preference_pairs(record: dict, count: int, drop_truncated: bool, answer_format,
                     prompt: str = "{question}") -> list[dict]:
    """Up to `count` pairs of a voted question (a `revote` record); none when it was not kept."""
    if record.get("reason") is not None or count < 1:
        return []
    samples, winners = record["samples"], record["winners"]
    truncated = record.get("truncated") or [False] * len(samples)
    answers = [None if cut and drop_truncated else a
               for a, cut in zip(record["extracted"], truncated)]
    chosen = [record["representative"], *(i for i in winners if i != record["representative"])]
    losers = [i for i in range(len(samples)) if i not in winners]
    k = len(samples)
    pairs = []
    for n, loser in enumerate(losers[:count]):
        win = chosen[n % len(chosen)]
        pairs.append({
            "id": record["id"],
            "prompt": [{"role": "user", "content": prompt.format(question=record["question"])}],
            "chosen": [{"role": "assistant", "content": samples[win].strip()}],
            "rejected": [{"role": "assistant", "content": samples[loser].strip()}],
            "chosen_answer": record["answer"],
            "rejected_answer": answers[loser],
            "margin": round(len(winners) / k - _share(answers, answers[loser], answer_format), 4),
        })
    return pairs


def _share(answers: list, answer, answer_format) -> float:
    """The vote share of `answer` among `answers` (0 for an abstention)."""
    if answer is None:
        return 0.0
    return sum(a is not None and answer_format.equal(a, answer) for a in answers) / len(answers)
