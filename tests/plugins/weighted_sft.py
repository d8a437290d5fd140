"""A fine-tuning objective with a setting of its own: SFT where each kept question's loss is
weighted by its vote's agreement share to the power `finetune.options.power` (0: plain SFT).

    plugins=[tests.plugins.weighted_sft] finetune.objective=weighted_sft +finetune.options.power=2

It trains on the answers stage's qa.jsonl (its `input_file`), which holds each kept question's
agreement beside its question and chosen response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crescent.errors import CrescentError
from crescent.infra.io import read_jsonl
from crescent.methods.sft_data import IGNORE_INDEX
from crescent.objectives.sft import SFTDataModule, SFTModule
from crescent.registry import OBJECTIVES


@dataclass
class WeightedOptions:
    power: float = 1.0  # weight = agreement ** power


class WeightedData(SFTDataModule):
    """SFT's examples, each carrying its weight into the batch."""

    def __init__(self, rows: list[dict], tokenizer, fcfg, seed: int):
        if fcfg.packing:
            raise CrescentError("finetune.objective=weighted_sft: packing mixes examples "
                                "of different weights in one row; set finetune.packing=false")
        super().__init__([r["messages"] for r in rows], tokenizer, fcfg, seed)
        power = fcfg.options.power
        self.weight_of = {id(r["messages"]): r["agreement"] ** power for r in rows}

    def encode(self, conversation):
        example = super().encode(conversation)
        if example is not None:
            example["weight"] = self.weight_of[id(conversation)]
        return example

    def collate(self, features):
        batch = super().collate(features)
        batch["weight"] = torch.tensor([f["weight"] for f in features], dtype=torch.float32)
        return batch


@OBJECTIVES.register("weighted_sft", options=WeightedOptions)
class WeightedSFT(SFTModule):
    """Cross-entropy over assistant tokens, each token weighted by its example's weight."""

    input_file = "qa.jsonl"

    @staticmethod
    def load_examples(path):
        return [{"messages": [{"role": "user", "content": r["question"]},
                              {"role": "assistant", "content": r["response"]}],
                 "agreement": r["agreement"]} for r in read_jsonl(path)]

    @staticmethod
    def data_module(examples, tokenizer, fcfg, seed):
        return WeightedData(examples, tokenizer, fcfg, seed)

    def compute_loss(self, batch):
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE_INDEX
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
        logits = self.model(**inputs).logits[:, :-1]
        per_token = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2).float(), targets, ignore_index=IGNORE_INDEX,
            reduction="none")
        n = mask.sum()
        return (per_token * batch["weight"][:, None] * mask).sum() / n.clamp(min=1), n
