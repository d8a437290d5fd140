"""transformers `generate`: no extra server, exactly reproducible, batched with left padding."""

from __future__ import annotations

from crescent.config import EngineConfig, ModelConfig
from crescent.engines.base import Engine, Generation, LmEvalModel, derive_seed
from crescent.errors import CrescentError
from crescent.infra.logs import verbose
from crescent.infra.models import resolve_model
from crescent.infra.precision import resolve_dtype
from crescent.registry import ENGINES


def hf_lm_eval_model(pretrained: str, dtype: str, max_length: int,
                     batch_size: int) -> LmEvalModel:
    """lm-eval's `hf` model type as `crescent-hf` (crescent/engines/lm_eval_hf.py: the LM head
    only where text is scored): transformers, batches sorted by length (longest first)."""
    import torch

    # lm-eval's hf model type assumes CUDA unless told otherwise.
    return LmEvalModel("crescent-hf",
                       {"pretrained": pretrained, "dtype": dtype, "max_length": max_length},
                       batch_size=batch_size,
                       device="cuda" if torch.cuda.is_available() else "cpu")


@ENGINES.register("hf")
class HFEngine(Engine):
    """transformers `generate`, batched with left padding, stopping at the chat EOS token."""

    @classmethod
    def lm_eval_model(cls, engine: EngineConfig, pretrained: str, dtype: str) -> LmEvalModel:
        return hf_lm_eval_model(pretrained, dtype, engine.max_model_len, engine.batch_size)

    def __init__(self, engine: EngineConfig, model: ModelConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = resolve_model(model.name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.model_path, revision=model.revision, padding_side="left"
            )
            self.model = AutoModelForCausalLM.from_pretrained(
                self.model_path, revision=model.revision, dtype=getattr(torch, resolve_dtype(model.dtype))
            ).eval()
        except OSError as e:
            raise CrescentError(f"model {model.name!r}: cannot load ({e})") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = engine.batch_size
        self.max_model_len = engine.max_model_len

    def chat(self, conversations, sampling, n, seed):
        prompts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        return self.complete(prompts, sampling, n, seed)

    def complete(self, prompts, sampling, n, seed):
        import torch
        from tqdm import tqdm

        per_batch = max(1, self.batch_size // n)  # batch_size counts sequences, n per prompt
        results: list[Generation] = []
        starts = range(0, len(prompts), per_batch)
        quiet = len(starts) < 2 or not verbose()  # the stage's own bar counts questions
        for b, start in enumerate(tqdm(starts, desc="hf generate", disable=quiet)):
            batch = prompts[start : start + per_batch]
            # Templated prompts already hold the special tokens; raw ones are taken as they are.
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            width = enc["input_ids"].shape[1]
            max_new = min(sampling.max_tokens, self.max_model_len - width)
            if max_new <= 0:
                raise CrescentError(
                    f"prompt of {width} tokens leaves no room under engine.max_model_len="
                    f"{self.max_model_len}"
                )
            torch.manual_seed(derive_seed(seed, b))
            greedy = sampling.temperature == 0
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    do_sample=not greedy,
                    temperature=None if greedy else sampling.temperature,
                    top_p=None if greedy else sampling.top_p,
                    top_k=None,
                    max_new_tokens=max_new,
                    num_return_sequences=n,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
            new = out[:, width:]
            for i in range(len(batch)):
                rows = new[i * n : (i + 1) * n]
                # Tokens up to and including the first EOS are the completion; pads follow it.
                lengths = [_length_to_eos(row, self.tokenizer.eos_token_id) for row in rows]
                results.append(
                    Generation(
                        texts=[
                            self.tokenizer.decode(row[:k], skip_special_tokens=True)
                            for row, k in zip(rows, lengths)
                        ],
                        completion_tokens=lengths,
                        prompt_tokens=int(enc["attention_mask"][i].sum()),
                        # No end-of-sequence token among the new ones: cut by max_new_tokens.
                        finish_reasons=["stop" if (row == self.tokenizer.eos_token_id).any()
                                        else "length" for row in rows],
                    )
                )
        return results


def _length_to_eos(row, eos_id: int) -> int:
    hits = (row == eos_id).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(row)
