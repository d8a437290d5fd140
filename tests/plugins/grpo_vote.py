"""An online objective from outside the package: GRPO whose reward is the vote.

For each question of a batch the policy samples `group` answers; an answer's reward is 1 when
it agrees with the plurality of its own group (the run's vote rule over the group, any floor),
else 0; advantages are the rewards less the group's mean over its spread (GRPO), and the loss is
minus the advantage-weighted mean log-probability of each answer's tokens. It reads the vote
and the answer format through the objective context, so it declares `reads`: its cache key
holds `voting` and `domain`.

    plugins=[tests.plugins.grpo_vote] finetune.objective=grpo_vote finetune.input=questions.jsonl
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from crescent.infra.io import read_jsonl
from crescent.methods.training import CausalLMModule, TrainData
from crescent.registry import OBJECTIVES


@dataclass
class GRPOOptions:
    group: int = 6  # answers sampled per question
    max_new_tokens: int = 24
    temperature: float = 1.0


class Questions(TrainData):
    """The questions themselves: nothing to encode before the policy answers them."""

    def __init__(self, questions: list[dict], fcfg):
        super().__init__()
        self.questions, self.fcfg = questions, fcfg
        self.train, self.val, self.counts = None, [], {}

    def setup(self, stage: str) -> None:
        self.train = list(self.questions)
        self.counts = {"examples": len(self.train), "val_examples": 0}

    def collate(self, rows: list[dict]) -> dict:
        return {"questions": rows}

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.fcfg.batch_size, collate_fn=self.collate)

    def val_dataloader(self):
        return DataLoader([], collate_fn=self.collate)


@OBJECTIVES.register("grpo_vote", options=GRPOOptions)
class GRPOVote(CausalLMModule):
    input_file = "qa.jsonl"
    reads = ("voting", "domain")

    @staticmethod
    def load_examples(path):
        return [{"id": row.get("id", i), "question": row["question"]}
                for i, row in enumerate(read_jsonl(path))]

    @staticmethod
    def data_module(examples, tokenizer, fcfg, seed):
        return Questions(examples, fcfg)

    def compute_loss(self, batch: dict):
        from transformers import AutoTokenizer

        options = self.fcfg.options
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        losses = []
        for question in batch["questions"]:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": self.context.cfg.domain.answer_prompt.format(
                    question=question["question"])}], tokenize=False, add_generation_prompt=True)
            prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
            with torch.no_grad():
                out = self.model.generate(
                    prompt_ids.repeat(options.group, 1), do_sample=True,
                    temperature=options.temperature, max_new_tokens=options.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    use_cache=True)  # training turned the cache off
            answers = out[:, prompt_ids.shape[1]:]
            texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
            plurality = self.context.vote(question, texts, min_votes=1, min_agreement=0.0,
                                          tie_break="seeded")
            reward = torch.zeros(options.group)
            reward[plurality.winners] = 1.0
            advantage = (reward - reward.mean()) / (reward.std() + 1e-4)
            mask = (answers != (tokenizer.pad_token_id or tokenizer.eos_token_id)).float()
            logits = self.model(out).logits[:, prompt_ids.shape[1] - 1:-1].float()
            logps = logits.log_softmax(-1).gather(-1, answers.unsqueeze(-1)).squeeze(-1)
            per_answer = (logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            losses.append(-(advantage * per_answer).mean())
        return torch.stack(losses).mean(), torch.tensor(len(losses))
