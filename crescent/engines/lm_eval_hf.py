"""lm-eval model type `crescent-hf`: lm-eval's `hf` type, scoring given text with the LM head
only where a score is read.

lm-eval's `hf` type computes the LM head, and a log-softmax over the whole vocabulary, at every
position of a padded batch (context, continuation and padding) and then reads the
continuation's positions. This type computes the head from the batch's first continuation
position on (the model's own head: `logits_to_keep`, so any scaling or soft-capping stays the
model's) and the log-softmax at each row's continuation positions alone. On a 2-core CPU the
evaluate stage gave the same scores on SmolLM2-135M in 16% less time over the first 100 GSM8K
gold solutions and 3% less over all 1,319, where its small head is a small share of the work;
on Qwen2.5-0.5B (a 152k-token vocabulary) it reached the plain forward pass (docs/benchmarks.md).

Everything else is lm-eval's: the requests, their order and batches (length-sorted, longest
first, truncated from the left as the `hf` type does), the one-token-continuation cache of
multiple-choice tasks, generation, logs and metrics. Registered in the scoring process
(crescent/methods/scoring.py: `LM_EVAL_MODELS`) and by the `crescent-lm-eval` command.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from tqdm import tqdm

Request = tuple[tuple[str, str], list[int], list[int]]  # (strings, context ids, continuation ids)


class ContinuationHeadLM(HFLM):
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        batch_size = override_bs or self.batch_size
        if (self.backend != "causal" or batch_size == "auto"
                or "logits_to_keep" not in inspect.signature(self.model.forward).parameters):
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        ordered = Collator(
            requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])),
            group_by="contexts" if self.logits_cache else None,
            group_fn=lambda r: r[-2] + r[-1][:-1])
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                   desc="Running loglikelihood requests")
        results = []
        for chunk in ordered.get_batched(n=batch_size):
            # As the hf type: the last max_length tokens, the final one only predicted.
            inputs = [(context + continuation)[-(self.max_length + 1):][:-1]
                      for _, context, continuation in chunk]
            first = min(len(tokens) - len(continuation)
                        for tokens, (_, _, continuation) in zip(inputs, chunk))
            logits = self._logits_from(inputs, first)
            for (strings, context, continuation), tokens, row in zip(chunk, inputs, logits):
                end = len(tokens) - first
                scored = F.log_softmax(row[end - len(continuation):end], dim=-1,
                                       dtype=self.softmax_dtype).unsqueeze(0)
                greedy = scored.argmax(dim=-1)
                # Each request of a one-token-continuation group shares these log-probs.
                for request_str, targets, logprobs in ordered.get_cache(
                        req_str=strings, cxt_toks=context, cont_toks=continuation,
                        logits=scored):
                    targets = torch.tensor(targets, dtype=torch.long,
                                           device=self.device).unsqueeze(0)
                    answer = (float(torch.gather(logprobs, 2, targets.unsqueeze(-1)).sum()),
                              bool((greedy[:, -targets.shape[1]:] == targets).all()))
                    results.append(answer)
                    if request_str is not None:  # rolling requests are cached per document
                        self.cache_hook.add_partial("loglikelihood", request_str, answer)
                    bar.update(1)
        bar.close()
        return ordered.get_original(results)

    def _logits_from(self, inputs: list[list[int]], first: int) -> torch.Tensor:
        """Logits at positions `first`.. of the right-padded batch of `inputs`: right padding
        needs no attention mask in a causal model, as in the hf type."""
        ids = torch.zeros((len(inputs), max(map(len, inputs))), dtype=torch.long,
                          device=self.device)
        for row, tokens in zip(ids, inputs):
            row[:len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        keep = torch.arange(first, ids.shape[1], device=self.device)
        with torch.no_grad(), torch.autocast(device_type=self.device.type,
                                             dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            return self.model(ids, logits_to_keep=keep, use_cache=False).logits
