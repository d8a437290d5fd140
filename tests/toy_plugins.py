"""Plug-ins from outside the package with no settings of their own: a vote rule that keeps
every answered question (its first answer) and a dedup embedder that calls two questions
duplicates when they start with the same word. tests/test_components.py runs them with the
plug-ins under tests/plugins/.
"""

from __future__ import annotations

import zlib

import numpy as np

from crescent.methods.dedup import VectorIndex
from crescent.methods.voting import Vote, group_answers
from crescent.registry import EMBEDDERS, VOTE_RULES


@VOTE_RULES.register("first")
def first_answer(answers, responses, cfg, seed, answer_format) -> Vote:
    """No consensus at all: the first sample that answered wins."""
    groups = group_answers(answers, answer_format.equal)
    votes = {answers[g[0]]: len(g) for g in groups}
    abstained = sum(a is None for a in answers)
    first = next((i for i, a in enumerate(answers) if a is not None), None)
    if first is None:
        return Vote(None, votes, 0.0, abstained, "abstained", [], None)
    winners = next(g for g in groups if first in g)
    return Vote(answers[first], votes, len(winners) / len(answers), abstained, None, winners,
                first)


def first_word(text: str) -> str:
    return (text.split() or [""])[0].lower()


class FirstWord:
    """Two questions are duplicates when they start with the same word: a one-hot vector per
    first word, so cosine similarity is exactly 1 (same word) or 0."""

    DIM = 1 << 16

    def embed(self, texts):
        vectors = np.zeros((len(texts), self.DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            vectors[row, zlib.crc32(first_word(text).encode()) % self.DIM] = 1.0
        return vectors

    def make_index(self):
        return VectorIndex(self.DIM)


@EMBEDDERS.register("first_word")
def first_word_embedder(dedup_cfg, model_cfg):
    return FirstWord()
