"""Lightning training for the finetune stage: the data module, the causal-LM module (loss,
optimiser, per-step metrics), atomic checkpoints, the trainer, and the merged model's save.

Training: full fine-tuning or LoRA (peft, merged before saving), AdamW with warm-up and a
cosine/linear decay, clipping, accumulation, optional gradient checkpointing. Precision,
accelerator, devices, strategy and nodes are Lightning's, from the config, so the same
experiment runs on this CPU and on a GPU cluster.

Resume: the checkpoint holds the trained weights, optimiser, scheduler, loop counters and the
sampler's place in the epoch; the module keeps one metrics row per optimiser step (rows past the
checkpoint are dropped on resume, so every step appears once) with the attempt that trained it.

This module imports Lightning and torch at the top: the stage imports it only once training
starts, so that `crescent --help` and `--cfg job` stay light.
"""

from __future__ import annotations

import functools
import gc
import inspect
import json
import math
import os
import random
import resource
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from crescent.infra.engines import resolve_dtype
from crescent.infra.io import CrescentError, JsonlAppender, atomic_write_text, resume_jsonl
from crescent.methods.sft_data import (
    IGNORE_INDEX,
    ResumableBatchSampler,
    collate,
    encode_conversation,
    pack,
)

# ------------------------------------------------------------------------------------- settings


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16-mixed on a GPU (16-mixed where bf16 is missing), 32-true on CPU."""
    if precision != "auto":
        return precision
    if accelerator != "cpu" and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def load_dtype(precision: str) -> str:
    """Weights are loaded in the dtype a `*-true` precision trains in; mixed precision keeps
    float32 master weights."""
    if precision.startswith("bf16-true"):
        return "bfloat16"
    if precision.startswith("16-true"):
        return "float16"
    return "float32"


def lr_factor(step: int, warmup: int, total: int, kind: str, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at optimiser step `step` (0-based), as transformers' schedules:
    linear warm-up from 0, then cosine or linear decay to `min_ratio` at `total`, or constant."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        decay = 1.0 - progress
    else:
        raise CrescentError(f"finetune.scheduler={kind!r}: expected cosine, linear or constant")
    return min_ratio + (1.0 - min_ratio) * decay


# ----------------------------------------------------------------------------------------- loss


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
        logits = (hidden[s : s + chunk] @ weight.T).float()
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


# ------------------------------------------------------------------------------------ lightning


class ResumableLoader(DataLoader):
    """A DataLoader whose place in the epoch Lightning saves and restores."""

    def state_dict(self) -> dict:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)


class StepBar(L.Callback):
    """One bar over the optimiser steps of the whole fine-tune, with the last step's loss
    (Lightning's own restarts at every epoch and counts micro-batches), on rank zero."""

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=trainer.estimated_stepping_batches, initial=trainer.global_step,
                        desc="finetune", unit="step", disable=not trainer.is_global_zero)
        self.shown: dict[str, str] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._show(trainer, "train/loss", "loss")
        self.bar.update(trainer.global_step - self.bar.n)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._show(trainer, "val/loss", "val")

    def _show(self, trainer, metric: str, name: str) -> None:
        value = trainer.callback_metrics.get(metric)
        if value is not None:
            self.shown[name] = f"{float(value):.4f}"
            self.bar.set_postfix(self.shown, refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self.bar.close()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint beside its path and rename it over: a kill mid-write leaves the
    previous `last.ckpt` whole."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        tmp = f"{path}.tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class SFTDataModule(L.LightningDataModule):
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
        examples = [encode_conversation(self.tokenizer, c, f.max_length)
                    for c in self.conversations]
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
        self.counts = {
            "conversations": len(self.conversations),
            "dropped_no_assistant_token": len(examples) - len(kept),
            "examples": len(train),
            "val_examples": len(val),
            "train_tokens_per_epoch": sum(len(e["input_ids"]) for e in train),
            "train_loss_tokens_per_epoch": sum(
                sum(1 for x in e["labels"] if x != IGNORE_INDEX) for e in train),
        }
        if f.packing:
            train, val = pack(train, f.max_length), pack(val, f.max_length)
            self.counts["packed_rows"] = len(train)
        self.train, self.val = train, val

    def _collate(self, features):
        return collate(features, self.pad_id)

    def train_dataloader(self):
        sampler = ResumableBatchSampler(
            len(self.train), self.fcfg.batch_size, self.fcfg.shuffle, self.seed,
            self.trainer.global_rank, self.trainer.world_size)
        return ResumableLoader(self.train, batch_sampler=sampler, collate_fn=self._collate,
                               num_workers=self.fcfg.num_workers)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.fcfg.batch_size, shuffle=False,
                          collate_fn=self._collate, num_workers=self.fcfg.num_workers)


class SFTModule(L.LightningModule):
    """A causal LM (full or LoRA) trained on the assistant tokens."""

    def __init__(self, fcfg, model_path: str, dtype: str, metrics_path: Path | None):
        super().__init__()
        self.fcfg, self.model_path, self.dtype_name = fcfg, model_path, dtype
        self.metrics_path = metrics_path
        self.model = None
        # Checkpoints hold only the trained weights; frozen ones come from the student.
        self.strict_loading = False
        self.resumed_from_step = 0
        self._logged_step = 0
        self.attempt = 1
        self.tokens_this_run = 0
        self.train_seconds = 0.0
        self.peak_rss_mib = 0.0
        self._appender: JsonlAppender | None = None
        self._reset_step()

    # ---- model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM

        f = self.fcfg
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=getattr(torch, self.dtype_name))
        model.config.use_cache = False
        if f.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        if f.mode == "lora":
            from peft import LoraConfig, get_peft_model

            targets = list(f.lora_target_modules)
            model = get_peft_model(model, LoraConfig(
                r=f.lora_r, lora_alpha=f.lora_alpha, lora_dropout=f.lora_dropout,
                target_modules="all-linear" if targets == ["all-linear"] else targets,
                task_type="CAUSAL_LM"))
        elif f.mode != "full":
            raise CrescentError(f"finetune.mode={f.mode!r}: expected full or lora")
        model.train()  # from_pretrained returns eval mode: LoRA dropout would be off
        self.model = model
        base = model.get_base_model() if f.mode == "lora" else model
        self._base = base
        # Sharded strategies split the head's weight: they take the logits path.
        self._fused_head = (f.fused_loss and fusable_head(base)
                            and (f.strategy == "auto" or f.strategy.startswith("ddp")))
        self._slice_logits = "logits_to_keep" in inspect.signature(base.forward).parameters

    def loss(self, batch: dict):
        """Mean cross-entropy over the batch's assistant tokens. The LM head (a large
        matmul) runs only on the positions that predict a trained token, in chunks
        (`linear_cross_entropy`); models it cannot take get the logits of the span from
        the first to the last such position from their own forward."""
        labels = batch["labels"]
        targets = labels[:, 1:]
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")
                  if k in batch}
        mask = targets != IGNORE_INDEX
        n = mask.sum()
        if self._fused_head:
            backbone = getattr(self._base, self._base.base_model_prefix)
            hidden = backbone(**inputs, use_cache=False).last_hidden_state[:, :-1]
            head = self._base.get_output_embeddings()
            loss = linear_cross_entropy(hidden[mask], head.weight, targets[mask])
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

    # ---- training
    def _reset_step(self) -> None:
        self._loss_sum = 0.0
        self._micro = 0
        self._tokens = 0
        self._loss_tokens = 0
        self._lr = None

    def on_train_start(self) -> None:
        self.resumed_from_step = self._logged_step = self.trainer.global_step
        if self.trainer.is_global_zero and self.metrics_path is not None:
            rows = resume_jsonl(self.metrics_path)
            kept = [r for r in rows if r["step"] <= self.resumed_from_step]
            self.attempt = max((r["attempt"] for r in rows), default=0) + 1
            atomic_write_text(self.metrics_path,
                              "".join(json.dumps(r) + "\n" for r in kept))
            self._appender = JsonlAppender(self.metrics_path)
        self._started = self._last = time.perf_counter()

    def on_train_end(self) -> None:
        self.train_seconds = time.perf_counter() - self._started
        self.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self._appender is not None:
            self._appender.close()
            self._appender = None

    def training_step(self, batch, batch_idx):
        if self._lr is None:
            self._lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        loss, _ = self.loss(batch)
        self._loss_sum = self._loss_sum + loss.detach()
        self._micro += 1
        self._tokens += batch["num_tokens"]
        self._loss_tokens += batch["num_loss_tokens"]
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        step = self.trainer.global_step
        if self._micro == 0 or step == self._logged_step:
            return  # still accumulating towards this optimiser step
        self._logged_step = step
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        loss = float(self._loss_sum / self._micro)
        tokens, loss_tokens = self._tokens, self._loss_tokens
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(
                torch.tensor([tokens, loss_tokens], device=self.device), reduce_op="sum")
            tokens, loss_tokens = (int(x) for x in total.tolist())
        self.tokens_this_run += tokens
        self.log_dict({"train/loss": loss, "train/lr": self._lr,
                       "train/tokens_per_s": tokens / max(seconds, 1e-9)},
                      on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        if self._appender is not None:
            self._appender.write({
                "step": step, "epoch": self.trainer.current_epoch, "loss": round(loss, 6),
                "lr": self._lr, "tokens": tokens, "loss_tokens": loss_tokens,
                "seconds": round(seconds, 4), "attempt": self.attempt})
        self._reset_step()

    def on_validation_end(self) -> None:
        self._last = time.perf_counter()  # validation is not training time per step

    def validation_step(self, batch, batch_idx):
        loss, n = self.loss(batch)
        # Weighted by assistant tokens: the epoch value is the token-level mean.
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=max(int(n), 1))

    def configure_optimizers(self):
        f = self.fcfg
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": f.weight_decay},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
        ]
        # The fused kernel (transformers' default optimiser too) is one pass over all
        # weights; sharded strategies keep the per-parameter loop.
        fused = (f.strategy == "auto" or f.strategy.startswith("ddp")) and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for _, p in named)
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=f.lr,
                                      betas=tuple(f.betas), fused=fused)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = f.warmup_steps or round(f.warmup_ratio * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
            lr_factor, warmup=warmup, total=total, kind=f.scheduler,
            min_ratio=f.min_lr_ratio))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trained = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in trained}


# ---------------------------------------------------------------------------- trainer and model


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and the data loader workers, as Lightning does."""
    L.seed_everything(seed, workers=True, verbose=False)


def build_trainer(fcfg, root_dir: Path, checkpoint_dir: Path, precision: str,
                  logger) -> L.Trainer:
    """The Trainer the finetune config describes, logging to `logger` (None: no logger).
    With `checkpoint_every_n_steps`, it writes `last.ckpt` into `checkpoint_dir` that often."""
    f = fcfg
    callbacks, plugins = [StepBar()] if f.progress_bar else [], []
    if f.checkpoint_every_n_steps > 0:
        callbacks.append(ModelCheckpoint(
            dirpath=str(checkpoint_dir), every_n_train_steps=f.checkpoint_every_n_steps,
            save_top_k=0, save_last=True, enable_version_counter=False))
        if f.strategy == "auto" or f.strategy.startswith("ddp"):
            plugins.append(AtomicCheckpointIO())  # sharded strategies write their own dirs
    validate = f.val_fraction > 0
    val_args = ({"val_check_interval": f.val_every_n_steps * f.accumulate_grad_batches,
                 "check_val_every_n_epoch": None} if validate and f.val_every_n_steps > 0
                else {"limit_val_batches": 1.0 if validate else 0})
    devices = int(f.devices) if f.devices.lstrip("-").isdigit() else f.devices
    return L.Trainer(
        accelerator=f.accelerator, devices=devices, strategy=f.strategy,
        num_nodes=f.num_nodes, precision=precision, max_steps=f.max_steps,
        max_epochs=f.max_epochs, accumulate_grad_batches=f.accumulate_grad_batches,
        gradient_clip_val=f.gradient_clip_val or None, callbacks=callbacks,
        enable_checkpointing=f.checkpoint_every_n_steps > 0, plugins=plugins or None,
        logger=logger or False, log_every_n_steps=f.log_every_n_steps,
        num_sanity_val_steps=0, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
        default_root_dir=str(root_dir), **val_args,
    )


def release_optimizer(trainer: L.Trainer) -> None:
    """Drop the optimiser state (twice the trained weights), which saving the model does not
    need."""
    trainer.strategy.optimizers, trainer.strategy.lr_scheduler_configs = [], []
    gc.collect()


def save_model(model, tokenizer, target: Path, mode: str, dtype: str) -> None:
    """Merge LoRA, restore inference settings and save model + tokenizer (with its chat
    template) into `target`, atomically: readers see no model or the whole model. `dtype` is
    the student's setting (`auto` resolved as the engines resolve it)."""
    if mode == "lora":
        model = model.merge_and_unload()
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    model.config.use_cache = True
    model = model.to(getattr(torch, resolve_dtype(dtype)))
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
