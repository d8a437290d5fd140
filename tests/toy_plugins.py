"""A plug-in from outside the package: one toy entry at each of Crescent's extension points.

Loaded with `plugins=[tests.toy_plugins]`; its domain's prompts are
tests/plugin_conf/domain/parity.yaml, found with `hydra.searchpath=[file://tests/plugin_conf]`.
tests/test_plugins.py selects them all and runs questions -> answers -> finetune.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from crescent.config import SamplingConfig
from crescent.domains import AnswerFormat
from crescent.engines.hf import HFEngine
from crescent.methods.dedup import VectorIndex
from crescent.methods.voting import Vote, group_answers
from crescent.objectives.sft import SFTModule
from crescent.registry import ANSWER_FORMATS, EMBEDDERS, ENGINES, OBJECTIVES, VOTE_RULES

CAP = 40  # new tokens per completion the toy engine allows, whatever the stage asks for
SHIFT = 10.0  # what the toy objective adds to the SFT loss (the gradients stay SFT's)


@ENGINES.register("short_hf")
class ShortHF(HFEngine):
    """transformers `generate` with every completion cut at CAP tokens."""

    def complete(self, prompts, sampling, n, seed):
        capped = SamplingConfig(temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=min(sampling.max_tokens, CAP))
        return super().complete(prompts, capped, n, seed)


@ANSWER_FORMATS.register("parity")
class Parity(AnswerFormat):
    """The answer is whether the last integer written is even or odd."""

    @staticmethod
    def extract(text: str) -> str | None:
        numbers = re.findall(r"-?\d+", text)
        return None if not numbers else ("even" if int(numbers[-1]) % 2 == 0 else "odd")

    @staticmethod
    def equal(a: str, b: str) -> bool:
        return a == b


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


@OBJECTIVES.register("shifted_sft")
class ShiftedSFT(SFTModule):
    """SFT's loss plus a constant: the same data and gradients, a loss curve one can recognise."""

    def compute_loss(self, batch):
        loss, weight = super().compute_loss(batch)
        return loss + SHIFT, weight


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
