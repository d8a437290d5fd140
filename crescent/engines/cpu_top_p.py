"""Top-p on a CPU without sorting the vocabulary: vLLM's CPU sampler, patched in this process.

vLLM applies top-p (nucleus sampling: `sampling.top_p`, 0.95 in the questions and answers
stages) by sorting every row of the logits, all 151,936 of Qwen2.5's vocabulary, at every
decoding step. On a CPU that sort is most of a sampled step: 64 GSM8K answers of the 0.5B
model decoded 98 tokens/s with vLLM's top-p 0.95, 243 with top-p off and 260 with this module's
(2-core AMX CPU, bfloat16, 2026-12-06, `experiments/bench_engines.py --top-p`,
docs/benchmarks.md).

The nucleus lies within the few hundred most likely tokens for almost every row, and
`torch.topk` finds those without a full sort. `nucleus` cuts the nucleus from them by vLLM's
own rule (a token stays when the tokens more likely than it hold less than p; the most likely
one always stays); a row whose `CANDIDATES` most likely tokens do not close the nucleus, and a
call with top-k, go to vLLM's function. The kept tokens are the same as vLLM's (up to the
float rounding of a running sum at the nucleus's edge) and vLLM's sampler then draws from them
with the same per-token noise, so the samples are the same: tests/test_engines.py compares them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CANDIDATES = 1024  # tokens looked at per row before falling back to vLLM's sort


def nucleus(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None,
            fallback: Callable) -> torch.Tensor:
    """vLLM's `apply_top_k_top_p(logits, k, p)` for the top-p-only case, in place."""
    if k is not None or p is None:
        return fallback(logits, k, p)
    rows = (p < 1).nonzero().flatten()  # a CPU tensor: no device sync to avoid
    if rows.numel() == 0:
        return logits
    some, p = logits[rows], p[rows].unsqueeze(1)
    top, index = some.topk(min(CANDIDATES, some.shape[1]), dim=-1)  # most likely first
    probs = (top - some.logsumexp(dim=-1, keepdim=True)).exp()
    keep = probs.cumsum(dim=-1) - probs < p  # what the tokens above each one hold
    keep[:, 0] = True
    cut = torch.full_like(some, -float("inf"))
    cut.scatter_(1, index, top.masked_fill(~keep, -float("inf")))
    open_ended = keep[:, -1].nonzero().flatten()  # the last candidate kept: the nucleus may go on
    if open_ended.numel():
        cut[open_ended] = fallback(some[open_ended], None, p[open_ended].squeeze(1))
    logits[rows] = cut
    return logits


def patch_vllm_sampler() -> None:
    """Route vLLM's CPU sampler's top-p through `nucleus`, once a process (vLLM imported)."""
    from vllm.v1.sample.ops import topk_topp_sampler as ops

    original = ops.apply_top_k_top_p
    if getattr(original, "crescent_nucleus", False):
        return

    def apply_top_k_top_p(logits, k, p):
        return nucleus(logits, k, p, original)

    apply_top_k_top_p.crescent_nucleus = True
    apply_top_k_top_p.original = original  # vLLM's own, for the comparison in the tests
    ops.apply_top_k_top_p = apply_top_k_top_p
