"""The `dpo` objective: DPO's sigmoid loss on the vote's preference pairs (answers/prefs.jsonl).

For a pair (prompt x, chosen y+, rejected y-) and the sums of log-probabilities of each
response's assistant tokens under the policy (log pi) and the frozen reference (log ref, the
student before training), the loss is -log sigmoid(beta * ((log pi(y+) - log ref(y+)) -
(log pi(y-) - log ref(y-)))), averaged over pairs, as TRL's DPOTrainer computes it
(loss_type="sigmoid"; tests/test_dpo.py checks the loss, the rewards and the gradients against
it). Its options (`finetune.options.*`, DPOOptions): `beta`; `margin_weight` scales each pair's
loss by its vote-share margin (ScPO); `sft_weight` adds that times the chosen responses' mean
token cross-entropy (RPO). They were `finetune.beta`, ... before 2026-12-06; those keys still
work (crescent/config.py, RENAMED).

The reference log-probabilities are computed once, with a copy of the student loaded from its
own files (the same for full and LoRA training, on every attempt), before training starts, and
kept in the stage dir (`reference_logps.json`) so a resumed fine-tune reads them back.
Per step the rewards (beta times the log-ratios) of chosen and rejected, their margin and the
share of pairs ranked right are logged as `train/rewards/*`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from crescent.artefacts import PREFS
from crescent.errors import CrescentError
from crescent.infra.io import numbered_jsonl, read_json, write_json
from crescent.methods.fused_loss import fusable_head, linear_cross_entropy
from crescent.methods.sft_data import IGNORE_INDEX, collate
from crescent.methods.training import CausalLMModule
from crescent.objectives.sft import SFTDataModule
from crescent.options import DPOOptions
from crescent.registry import OBJECTIVES

REFERENCE = "reference_logps.json"


def load_pairs(path: Path) -> list[dict]:
    """Preference pairs from a prefs.jsonl (TRL's conversational format), checked."""
    pairs = []
    for line, row in numbered_jsonl(path):
        for key in ("prompt", "chosen", "rejected"):
            turns = row.get(key)
            if not (isinstance(turns, list) and turns and all(
                    isinstance(t, dict) and isinstance(t.get("content"), str) for t in turns)):
                raise CrescentError(f"{path}:{line}: '{key}' is not a list of chat messages")
        pairs.append({"prompt": row["prompt"], "chosen": row["chosen"],
                      "rejected": row["rejected"], "margin": float(row.get("margin", 1.0))})
    if not pairs:
        raise CrescentError(f"finetune.input: {path}: no preference pairs (the vote kept no "
                            f"question with a losing sample)")
    return pairs


class PreferenceDataModule(SFTDataModule):
    """Each pair encoded as two conversations (prompt + chosen, prompt + rejected) with labels
    on the response's tokens; a batch holds its chosen rows, then its rejected rows."""

    def setup(self, stage: str) -> None:
        if self.train is None:
            for i, pair in enumerate(self.conversations):
                pair["index"] = i  # its row in the reference log-probabilities
            super().setup(stage)

    def encode(self, pair: dict) -> dict | None:
        chosen, rejected = (encode_completion(self.tokenizer, pair["prompt"], pair[side],
                                              self.fcfg.max_length)
                            for side in ("chosen", "rejected"))
        if chosen is None or rejected is None:
            return None
        return {"chosen": chosen, "rejected": rejected, "margin": pair["margin"],
                "index": pair["index"]}

    def sizes(self, train: list[dict]) -> dict:
        rows = [e[side] for e in train for side in ("chosen", "rejected")]
        return {"pairs": len(train), **super().sizes(rows)}

    def arrange(self, examples: list[dict]) -> list[dict]:
        return examples  # pairs are not packed: each row's log-probability is summed whole

    def collate(self, features):
        batch = collate([f["chosen"] for f in features] + [f["rejected"] for f in features],
                        self.pad_id)
        batch["index"] = torch.tensor([f["index"] for f in features])
        batch["margin"] = torch.tensor([f["margin"] for f in features])
        return batch


def encode_completion(tokenizer, prompt: list[dict], response: list[dict],
                      max_length: int) -> dict | None:
    """Token ids of prompt + response in the chat template, labels on the response: all the
    template renders after the generation prompt, its end-of-turn text included, tokenised
    apart from the prompt (as TRL's DPOTrainer does). None when `max_length` cuts it all."""
    before = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    if not full.startswith(before):
        raise CrescentError("the student's chat template does not render the prompt as the "
                            "start of prompt + response, so the response cannot be located")
    prompt_ids = tokenizer(before, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full[len(before):], add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def sequence_logps(model, batch: dict, fused_base=None) -> torch.Tensor:
    """Per row: the sum of the log-probabilities of its labelled tokens. With `fused_base`
    (the model under any adapter, its head fusable) the LM head runs on the labelled positions
    only, in chunks (fused_loss.py): neither the prompt's logits nor a (rows x tokens x vocab)
    tensor are ever computed."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "use_cache": False}
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    if fused_base is not None:
        backbone = getattr(fused_base, fused_base.base_model_prefix)
        hidden = backbone(**inputs).last_hidden_state[:, :-1]
        weight = fused_base.get_output_embeddings().weight
        return torch.stack([-linear_cross_entropy(hidden[r][mask[r]], weight, targets[r][mask[r]])
                            for r in range(len(targets))])
    logits = model(**inputs).logits[:, :-1].float()
    picked = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


@OBJECTIVES.register("dpo", options=DPOOptions)
class DPOModule(CausalLMModule):
    """DPO against the student before training, on the vote's preference pairs."""

    input_file = PREFS

    @staticmethod
    def load_examples(path: Path) -> list[dict]:
        return load_pairs(path)

    @staticmethod
    def data_module(examples, tokenizer, fcfg, seed: int) -> PreferenceDataModule:
        return PreferenceDataModule(examples, tokenizer, fcfg, seed)

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        self.reference = reference_logps(self.model_path, self.dtype_name,
                                         data.train + data.val, data.collate,
                                         self.fcfg.batch_size, self.work_dir)

    def compute_loss(self, batch: dict):
        logps = sequence_logps(self.model, batch, self.base if self.fused_head else None)
        chosen, rejected = logps.chunk(2)
        ref = self.reference.to(logps.device)[batch["index"]]
        chosen_ratio, rejected_ratio = chosen - ref[:, 0], rejected - ref[:, 1]
        f = self.fcfg.options
        losses = -F.logsigmoid(f.beta * (chosen_ratio - rejected_ratio))
        if f.margin_weight:
            losses = losses * batch["margin"].to(losses.dtype)
        loss = losses.mean()
        if f.sft_weight:
            half = batch["labels"].shape[0] // 2
            tokens = (batch["labels"][:half, 1:] != IGNORE_INDEX).sum().clamp(min=1)
            loss = loss + f.sft_weight * (-chosen.sum() / tokens)
        self.rewards = (f.beta * chosen_ratio.detach(), f.beta * rejected_ratio.detach())
        return loss, torch.tensor(len(chosen))

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        chosen, rejected = self.rewards
        self.log_dict({"train/rewards/chosen": chosen.mean(),
                       "train/rewards/rejected": rejected.mean(),
                       "train/rewards/margin": (chosen - rejected).mean(),
                       "train/rewards/accuracy": (chosen > rejected).float().mean()},
                      on_step=True, on_epoch=False, batch_size=len(chosen))
        return out


@torch.no_grad()
def reference_logps(model_path: str, dtype: str, examples: list[dict], collate_fn,
                    batch_size: int, work_dir: Path | None) -> torch.Tensor:
    """(pairs, 2) log-probabilities of chosen and rejected under the untrained student, by
    pair index: read from `work_dir` when an earlier attempt computed them."""
    path = Path(work_dir) / REFERENCE if work_dir is not None else None
    count = max(e["index"] for e in examples) + 1
    if path is not None and path.is_file():
        saved = read_json(path)
        if len(saved) == count:
            return torch.tensor(saved, dtype=torch.float32)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
    table = torch.zeros((count, 2), dtype=torch.float32)
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        batch = collate_fn(part)
        chosen, rejected = sequence_logps(model, batch,
                                          model if fusable_head(model) else None).chunk(2)
        table[batch["index"], 0], table[batch["index"], 1] = chosen, rejected
    del model
    if path is not None:
        write_json(path, table.tolist())
    return table
