"""The LM head and cross-entropy fused: logits computed in chunks, on the trained positions only.

A causal LM's loss needs the logits of the positions that predict a trained token; a batch's
(tokens x vocab) logits, their log-softmax and its gradient are the largest tensors of a
fine-tune. `linear_cross_entropy` never holds more than a chunk of them (as TRL's and Liger's
fused heads do). Imports torch: used once training starts.
"""

from __future__ import annotations

import torch


def fusable_head(model) -> bool:
    """Whether the loss may run the LM head itself on the trained positions: a plain bias-free
    linear head on a backbone, and no logit scaling or soft-capping between them."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                 "lm_head_multiplier"):
        if getattr(config, attr, None) not in (None, 1, 1.0):
            return False
    head = model.get_output_embeddings()
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return (type(head) is torch.nn.Linear and head.bias is None
            and isinstance(backbone, torch.nn.Module) and backbone is not model)


def linear_cross_entropy(hidden, weight, targets, chunk_elements: int = 1 << 24):
    """Sum over rows of cross-entropy(hidden @ weight.T, targets), never holding more than
    `chunk_elements` logits: the gradients are computed chunk by chunk in the forward pass
    (as TRL's and Liger's fused heads do), so the (tokens x vocab) logits of the whole batch,
    their log-softmax and its gradient are never all in memory."""
    chunk = max(1, chunk_elements // weight.shape[0])
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(hidden, weight, targets, chunk)
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[0], chunk):
        logits = (hidden[s : s + chunk].to(weight.dtype) @ weight.T).float()
        total += torch.nn.functional.cross_entropy(logits, targets[s : s + chunk],
                                                   reduction="sum")
    return total


class LinearCrossEntropy(torch.autograd.Function):
    """`linear_cross_entropy` with gradients: the forward pass computes them chunk by chunk and
    keeps them for the backward pass, which only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        device = hidden.device.type
        mm_dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                    else weight.dtype)
        with torch.autocast(device, enabled=False):
            w = weight.to(mm_dtype)
            grad_h = torch.empty_like(hidden) if hidden.requires_grad else None
            grad_w = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                      if weight.requires_grad else None)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for s in range(0, hidden.shape[0], chunk):
                h, t = hidden[s : s + chunk].to(mm_dtype), targets[s : s + chunk]
                logits = (h @ w.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                g[torch.arange(len(t), device=g.device), t] -= 1.0  # d(sum CE)/d(logits)
                g = g.to(mm_dtype)
                if grad_h is not None:
                    grad_h[s : s + chunk] = g @ w
                if grad_w is not None:
                    if g.dtype == torch.float32:
                        grad_w.addmm_(g.T, h)
                    else:
                        grad_w += (g.T @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_out,
                None if grad_w is None else (grad_w * grad_out).to(ctx.weight_dtype),
                None, None)
