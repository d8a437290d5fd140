"""The `sft` objective: cross-entropy on the assistant tokens of the consensus conversations.

Data (crescent/methods/sft_data.py): every conversation is rendered with the student's own chat
template and tokenised once, with the loss on assistant tokens only; batches are padded to their
longest row and the loss runs them `padding_free` (the batch's examples as one row), or
`packing` fills rows of `max_length` with several examples. The model, the
optimiser, the per-step metrics and checkpoints are the shared ones (crescent/methods/training.py).
"""

from __future__ import annotations

import inspect
import random
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from crescent.artefacts import SFT
from crescent.errors import CrescentError
from crescent.methods.fused_loss import linear_cross_entropy
from crescent.methods.sft_data import (
    IGNORE_INDEX,
    ResumableBatchSampler,
    collate,
    encode_conversation,
    load_conversations,
    pack,
    padding_free,
)
from crescent.methods.training import CausalLMModule, ResumableLoader, TrainData
from crescent.registry import OBJECTIVES


class SFTDataModule(TrainData):
    """The conversations encoded once, split into train and validation examples (packed with
    `packing`), and served in batches whose place in the epoch a checkpoint keeps."""

    def __init__(self, conversations: list[list[dict]], tokenizer, fcfg, seed: int):
        super().__init__()
        self.conversations, self.tokenizer, self.fcfg, self.seed = (
            conversations, tokenizer, fcfg, seed)
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id
        self.train: list[dict] | None = None
        self.val: list[dict] = []
        self.counts: dict = {}

    def setup(self, stage: str) -> None:
        if self.train is not None:
            return
        f = self.fcfg
        examples = [self.encode(c) for c in self.conversations]
        kept = [e for e in examples if e is not None]
        if not kept:
            raise CrescentError(
                f"finetune: no example keeps an assistant token within "
                f"max_length={f.max_length}")
        order = list(range(len(kept)))
        random.Random(self.seed).shuffle(order)
        n_val = 0
        if f.val_fraction > 0 and len(kept) >= 2:
            n_val = min(len(kept) - 1, max(1, round(f.val_fraction * len(kept))))
        val = [kept[i] for i in order[:n_val]]
        train = [kept[i] for i in sorted(order[n_val:])]
        self.counts = {"conversations": len(self.conversations),
                       "dropped_no_assistant_token": len(examples) - len(kept),
                       "examples": len(train), "val_examples": len(val), **self.sizes(train)}
        self.train, self.val = self.arrange(train), self.arrange(val)
        if f.packing:
            self.counts["packed_rows"] = len(self.train)

    def encode(self, conversation: list[dict]) -> dict | None:
        """One example's token ids and assistant-only labels (None: no assistant token)."""
        return encode_conversation(self.tokenizer, conversation, self.fcfg.max_length)

    def sizes(self, train: list[dict]) -> dict:
        return {"train_tokens_per_epoch": sum(len(e["input_ids"]) for e in train),
                "train_loss_tokens_per_epoch": sum(
                    sum(1 for x in e["labels"] if x != IGNORE_INDEX) for e in train)}

    def arrange(self, examples: list[dict]) -> list[dict]:
        """The rows batches are drawn from: the examples, or packed rows of them."""
        return pack(examples, self.fcfg.max_length) if self.fcfg.packing else examples

    def collate(self, features):
        return collate(features, self.pad_id)

    def train_dataloader(self):
        sampler = ResumableBatchSampler(
            len(self.train), self.fcfg.batch_size, self.fcfg.shuffle, self.seed,
            self.trainer.global_rank, self.trainer.world_size)
        return ResumableLoader(self.train, batch_sampler=sampler, collate_fn=self.collate,
                               num_workers=self.fcfg.num_workers)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.fcfg.batch_size, shuffle=False,
                          collate_fn=self.collate, num_workers=self.fcfg.num_workers)


@OBJECTIVES.register("sft")
class SFTModule(CausalLMModule):
    """Mean cross-entropy over the batch's assistant tokens."""

    input_file = SFT  # the answers stage's consensus conversations

    @staticmethod
    def load_examples(path: Path) -> list[list[dict]]:
        return load_conversations(path)

    @staticmethod
    def data_module(examples, tokenizer, fcfg, seed: int) -> SFTDataModule:
        return SFTDataModule(examples, tokenizer, fcfg, seed)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        self._slice_logits = "logits_to_keep" in inspect.signature(self.base.forward).parameters
        self._head_copy = None
        if self.fcfg.padding_free:
            from crescent.methods.packed_attention import use_packed_sdpa

            use_packed_sdpa(self.base)  # each example of a padding-free row attends on its own

    def head_weight(self) -> torch.Tensor:
        """The LM head's weight for the fused loss: under LoRA with a low-precision base the
        head is frozen too and multiplies in the base's dtype (a copy, kept on the head's
        device: a tied head is also the float32 embedding)."""
        weight = self.base.get_output_embeddings().weight
        if self.base_dtype in (None, self.dtype_name) or weight.requires_grad:
            return weight
        if self._head_copy is None or self._head_copy.device != weight.device:
            self._head_copy = weight.detach().to(getattr(torch, self.base_dtype))
        return self._head_copy

    def compute_loss(self, batch: dict):
        """Mean cross-entropy over the batch's assistant tokens. The LM head (a large
        matmul) runs only on the positions that predict a trained token, in chunks
        (`linear_cross_entropy`); models it cannot take get the logits of the span from
        the first to the last such position from their own forward."""
        if self.fcfg.padding_free and batch.get("attention_mask") is not None:
            batch = padding_free(batch)
        labels = batch["labels"]
        targets = labels[:, 1:]
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")
                  if batch.get(k) is not None}
        mask = targets != IGNORE_INDEX
        n = mask.sum()
        if self.fused_head:
            backbone = getattr(self.base, self.base.base_model_prefix)
            hidden = backbone(**inputs, use_cache=False).last_hidden_state[:, :-1]
            loss = linear_cross_entropy(hidden[mask], self.head_weight(), targets[mask])
            return loss / n.clamp(min=1), n
        cols = mask.any(0).nonzero().flatten()
        if self._slice_logits and cols.numel():
            keep = torch.arange(int(cols[0]), int(cols[-1]) + 1, device=labels.device)
            logits = self.model(**inputs, logits_to_keep=keep).logits
            targets = targets[:, keep]
        else:
            logits = self.model(**inputs).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
            reduction="sum")
        return loss / n.clamp(min=1), n
