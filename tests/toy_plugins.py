"""A plug-in from outside the package: one toy entry at each of Crescent's four extension points.

Loaded with `plugins=[tests.toy_plugins]`; its domain's prompts are
tests/plugin_conf/domain/parity.yaml, found with `hydra.searchpath=[file://tests/plugin_conf]`.
tests/test_plugins.py selects all four and runs questions -> answers -> finetune.
"""

from __future__ import annotations

import re

from crescent.config import SamplingConfig
from crescent.domains import AnswerFormat
from crescent.engines.hf import HFEngine
from crescent.methods.voting import Vote, group_answers
from crescent.objectives.sft import SFTModule
from crescent.registry import ANSWER_FORMATS, ENGINES, OBJECTIVES, VOTE_RULES

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
