"""SFT data: chat conversations read and checked, tokenised with assistant-only labels, packed,
batched, and sampled resumably, for the finetune stage.

Every conversation is rendered with the student's own chat template and tokenised once; the loss
is on assistant tokens only (each assistant turn's content and its end-of-turn token), found from
the character spans the template gives each turn, so the mask is exact for any template that
renders a conversation prefix by prefix. Batches are padded to their longest row; the sft loss
runs them `padding_free` (one row of the batch's examples); `packing` instead fills rows of
`max_length` with several examples. In both, position ids restart at each example, which
transformers turns into a block-diagonal attention mask.

Light to import: torch is imported by `collate` when it first runs, `datasets` only to read a
save_to_disk dir.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crescent.errors import CrescentError
from crescent.infra.io import numbered_jsonl

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100  # label of tokens outside the loss (the value transformers ignores)
ROLES = ("system", "user", "assistant")


def load_conversations(path: Path) -> list[list[dict]]:
    """Conversations from an sft.jsonl file or a `datasets` save_to_disk dir, checked."""
    path = Path(path)
    if path.is_dir():
        return _from_datasets_dir(path)
    if not path.is_file():
        raise CrescentError(f"finetune.input: {path}: no such file or directory")
    conversations = []
    for lineno, obj in numbered_jsonl(path):
        problem = _check_messages(obj)
        if problem:
            raise CrescentError(f"{path}:{lineno}: {problem}")
        conversations.append(obj["messages"])
    if not conversations:
        raise CrescentError(f"finetune.input: {path}: no conversations")
    empty = [i + 1 for i, c in enumerate(conversations)
             if any(not str(m.get("content") or "").strip() for m in c
                    if m.get("role") in ("user", "assistant"))]
    if empty:
        logger.warning(
            "crescent: warning: %s: %d conversations have an empty user or assistant turn "
            "(first: conversation %d); they are trained on as they are", path, len(empty),
            empty[0])
    return conversations


def _from_datasets_dir(path: Path) -> list[list[dict]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError:
        raise CrescentError(f"finetune.input: {path}: not a datasets save_to_disk dir") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise CrescentError(f"finetune.input: {path}: DatasetDict without a 'train' split")
        ds = ds["train"]
    if "messages" not in ds.column_names:
        raise CrescentError(f"finetune.input: {path}: no 'messages' column ({ds.column_names})")
    conversations = []
    for i, row in enumerate(ds):
        problem = _check_messages(row)
        if problem:
            raise CrescentError(f"{path}: row {i}: {problem}")
        conversations.append([{"role": m["role"], "content": m["content"]}
                              for m in row["messages"]])
    return conversations


def _check_messages(obj: Any) -> str | None:
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(messages, list) or not messages:
        return "expected {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}"
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(
            m.get("content"), str
        ):
            return f"bad message {json.dumps(m)[:80]} (role one of {ROLES}, content a string)"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message to train on"
    return None


def encode_conversation(tokenizer, messages: list[dict], max_length: int) -> dict | None:
    """Token ids and labels of one conversation: labels are the ids on assistant tokens and
    IGNORE_INDEX elsewhere. None when truncation to `max_length` leaves no assistant token.

    Each assistant turn spans from the end of the prompt that asks for it (the template's
    generation prompt) to the end of the conversation rendered through it; the template's text
    after the end-of-turn token (SmolLM2's newline) is not the model's to predict.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = (tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                                add_generation_prompt=True) if i else "")
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise CrescentError(
                "the student's chat template does not render a conversation prefix by prefix, "
                "so the assistant tokens cannot be located"
            )
        spans.append((len(before), len(through)))
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise CrescentError("finetune needs a fast tokenizer (offset mapping)") from None
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    eos = tokenizer.eos_token_id
    for start, end in spans:
        positions = [j for j, (s, _) in enumerate(offsets) if start <= s < end]
        last_eos = max((k for k, j in enumerate(positions) if ids[j] == eos), default=None)
        if last_eos is not None:
            positions = positions[: last_eos + 1]
        for j in positions:
            labels[j] = ids[j]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def pack(examples: list[dict], max_length: int) -> list[dict]:
    """Next-fit packing in the given order: rows of at most `max_length` tokens holding
    whole examples, each with its own position ids from 0."""
    rows: list[dict] = []
    row = None
    for ex in examples:
        n = len(ex["input_ids"])
        if row is None or len(row["input_ids"]) + n > max_length:
            row = {"input_ids": [], "labels": [], "position_ids": []}
            rows.append(row)
        row["input_ids"] += ex["input_ids"]
        row["labels"] += ex["labels"]
        row["position_ids"] += list(range(n))
    return rows


def collate(features: list[dict], pad_id: int) -> dict:
    """Pad a batch to its longest row. Packed rows (with position ids) get no attention mask:
    transformers reads document boundaries from the position ids, and the padding forms a
    document of its own after the real ones."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    packed = "position_ids" in features[0]
    extra = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[i, :n] = torch.tensor(f["input_ids"])
        labels[i, :n] = torch.tensor(f["labels"])
        if packed:
            extra[i, :n] = torch.tensor(f["position_ids"])
            extra[i, n:] = torch.arange(width - n)
        else:
            extra[i, :n] = 1
    batch = {"input_ids": input_ids, "labels": labels,
             "num_tokens": sum(len(f["input_ids"]) for f in features),
             "num_loss_tokens": int((labels != IGNORE_INDEX).sum())}
    batch["position_ids" if packed else "attention_mask"] = extra
    return batch


def padding_free(batch: dict) -> dict:
    """A padded batch (`collate`'s, right-padded) as one row of its examples back to back,
    position ids restarting at each: the model computes nothing on padding and attends within
    each example only (transformers reads the boundaries from the position ids). Each
    example's first token stays out of the loss, as at the start of its own row, so the loss
    is the padded batch's."""
    import torch

    keep = batch["attention_mask"].bool()
    labels = batch["labels"].clone()
    labels[:, 0] = IGNORE_INDEX  # nothing predicts it: in one row its left neighbour would
    positions = torch.cat([torch.arange(int(n)) for n in keep.sum(1)])
    return {**batch, "input_ids": batch["input_ids"][keep][None], "labels": labels[keep][None],
            "position_ids": positions[None], "attention_mask": None}


class ResumableBatchSampler:
    """Batches of row indices, reshuffled every epoch from (seed, epoch) and sharded over ranks.

    It remembers how many batches of the epoch it has handed out; Lightning stores that in the
    checkpoint (`state_dict`) and a resumed run skips exactly those batches of that epoch.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.consumed = 0
        self._skip: tuple[int, int] = (0, 0)  # (epoch, batches) to skip once, after a resume

    def _batches(self) -> list[list[int]]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        per_rank = len(batches) // self.world_size  # equal counts keep DDP ranks in step
        return batches[self.rank :: self.world_size][:per_rank]

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        skip_epoch, skip = self._skip
        start = skip if skip_epoch == self.epoch else 0
        self._skip = (0, 0)
        self.consumed = start
        for batch in batches[start:]:
            self.consumed += 1
            yield batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self._skip = (state["epoch"], state["consumed"])
