"""Attention for padding-free rows: each example of a row attends causally within itself,
example by example, so no work goes to the positions between examples.

transformers reads a padding-free row's boundaries from its position ids and gives SDPA a dense
block-diagonal mask: SDPA then computes the whole row x row square, most of it masked out (for
8 examples of 250 tokens, 8x the work each example needs, and without the causal half skipped).
`packed_sdpa` runs SDPA once per example instead, causal, on the same queries, keys and values:
the same attention, a fraction of the work. Anything else (padded batches, a KV cache, sliding
windows) goes to transformers' own SDPA path unchanged. Imports torch and transformers: used
once training starts.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "crescent_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0,
                scaling: float | None = None, position_ids=None, sliding_window=None, **kwargs):
    starts = _example_starts(position_ids, query)
    if starts is None or sliding_window is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, position_ids=position_ids,
                                      sliding_window=sliding_window, **kwargs)
    ends = [*starts[1:], query.shape[2]]
    out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout, is_causal=True,
        scale=scaling, enable_gqa=key.shape[1] != query.shape[1]) for s, e in zip(starts, ends)],
        dim=2)
    return out.transpose(1, 2).contiguous(), None


def _example_starts(position_ids, query) -> list[int] | None:
    """Where each example of a single padding-free row starts (its position id 0), or None
    when this is not such a row (a batch of rows, a decoding step)."""
    if position_ids is None or query.shape[0] != 1 or position_ids.shape[-1] != query.shape[2]:
        return None
    starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist()
    return starts if len(starts) > 1 and starts[0] == 0 else None


def use_packed_sdpa(model) -> None:
    """Let `model` attend with `packed_sdpa` where it would use SDPA (its masks stay SDPA's)."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
