"""Lightning training shared by every fine-tuning objective: the causal-LM module base (model,
optimiser, schedule, checkpoint contents), the per-step metrics and progress callbacks, atomic
checkpoints, the trainer, and the merged model's save. An objective (crescent/objectives/)
subclasses `CausalLMModule` and supplies its data and its `compute_loss`; everything else is here.

Training: full fine-tuning or LoRA (peft, merged before saving), AdamW with warm-up and a
cosine/linear decay, clipping, accumulation, optional gradient checkpointing. Precision,
accelerator, devices, strategy and nodes are Lightning's, from the config, so the same
experiment runs on this CPU and on a GPU cluster.

Resume: the checkpoint holds the trained weights, optimiser, scheduler, loop counters and the
sampler's place in the epoch; `StepMetrics` keeps one metrics row per optimiser step (rows past
the checkpoint are dropped on resume, so every step appears once) with the attempt that trained it.

This module imports Lightning and torch at the top: the stage imports it only once training
starts, so that `crescent --help` and `--cfg job` stay light.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import resource
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from crescent.infra.io import JsonlAppender, atomic_write_text, resume_jsonl, umask_modes
from crescent.infra.precision import resolve_dtype

# ------------------------------------------------------------------------------------- settings


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
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


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

    def on_exception(self, trainer, pl_module, exception) -> None:
        if hasattr(self, "bar"):
            self.bar.close()  # now, before the stage's last line (Ctrl-C), not at exit after it


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint beside its path and rename it over: a kill mid-write leaves the
    previous `last.ckpt` whole."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        tmp = f"{path}.tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class TrainData(L.LightningDataModule):
    """The data contract between an objective and the finetune stage: after `setup`, `train`
    and `val` (the rows batches are drawn from), `counts` (what stats.json reports of them) and
    `collate(rows) -> batch`; `context` (an ObjectiveContext) is set before training."""

    train: list | None  # None until setup
    val: list
    counts: dict
    context = None

    def collate(self, rows: list) -> dict:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "_collate" in cls.__dict__:  # would be silently unused: say so where it is defined
            raise TypeError(f"{cls.__module__}.{cls.__qualname__} defines _collate: a data "
                            f"module's batch maker is `collate` (renamed from _collate)")


class CausalLMModule(L.LightningModule):
    """A causal LM (full or LoRA) trained on `compute_loss`, which an objective defines. The
    class is also what the objective registry holds: `load_examples` reads the finetune input,
    `data_module` serves it, `input_file` is the answers-stage file read by default."""

    input_file: str  # the answers stage's file it reads when finetune.input is unset
    reads: tuple[str, ...] = ()  # other config keys it reads (in finetune's cache key)
    context = None  # an ObjectiveContext, set by the finetune stage before training

    def __init__(self, fcfg, model_path: str, dtype: str, work_dir: Path | None = None,
                 base_dtype: str | None = None):
        super().__init__()
        self.fcfg, self.model_path, self.dtype_name = fcfg, model_path, dtype
        # lora: the dtype the frozen base is held and multiplied in (None: `dtype`)
        self.base_dtype = base_dtype
        self.work_dir = work_dir  # the stage dir: what an objective computes once lives here
        self.model = None
        # Checkpoints hold only the trained weights; frozen ones come from the student.
        self.strict_loading = False

    @staticmethod
    def load_examples(path: Path) -> list:
        raise NotImplementedError

    @staticmethod
    def data_module(examples: list, tokenizer, fcfg, seed: int) -> TrainData:
        raise NotImplementedError

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimise on `batch` and its weight in a validation mean (e.g. the
        number of trained tokens)."""
        raise NotImplementedError

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
            fast_lora_dropout(model)
            if self.base_dtype not in (None, self.dtype_name):
                hold_frozen_base(model, getattr(torch, self.base_dtype))
        model.train()  # from_pretrained returns eval mode: LoRA dropout would be off
        self.model = model
        self.base = model.get_base_model() if f.mode == "lora" else model
        from crescent.methods.fused_loss import fusable_head

        # The loss may run the LM head itself on the trained positions (fused_loss.py);
        # sharded strategies split the head's weight: they take the logits path.
        self.fused_head = (f.fused_loss and fusable_head(self.base)
                           and (f.strategy == "auto" or f.strategy.startswith("ddp")))

    # ---- steps
    def training_step(self, batch, batch_idx):
        loss, _ = self.compute_loss(batch)
        # `step_loss` as computed: Lightning divides `loss` by the accumulation for backward.
        return {"loss": loss, "step_loss": loss.detach(), "tokens": batch.get("num_tokens", 0),
                "loss_tokens": batch.get("num_loss_tokens", 0)}

    def validation_step(self, batch, batch_idx):
        loss, n = self.compute_loss(batch)
        # Weighted by the batch's weight (assistant tokens): the epoch value is that mean.
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
        # weights; sharded strategies keep the per-parameter loop, and so does mixed
        # precision: Lightning refuses to clip gradients for an optimiser that unscales them.
        fused = (f.strategy == "auto" or f.strategy.startswith("ddp")) and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for _, p in named) and (
            not str(self.trainer.precision).endswith("mixed"))
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


class LowPrecisionLinear(torch.nn.Linear):
    """A linear layer that multiplies in a low-precision dtype (bfloat16) while its input and
    output keep their own dtype (float32): a frozen weight is held in that dtype, a trained one
    stays float32 (its optimiser too) and is cast for the product, as mixed precision does.

    Under LoRA this puts the base's matmuls, most of a step's work, and the adapters' own on
    the CPU's bfloat16 units while the residual stream, the norms, the sum of base and adapter
    and every weight that trains stay float32. A base that is bfloat16 throughout (PEFT on a
    bfloat16 model) instead adds each adapter's update to a bfloat16 output: an update smaller
    than that output's rounding step (2^-8 of it) is partly lost, and training trails float32
    (experiments/bench_training.py loss-gap)."""

    compute_dtype: torch.dtype

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, dtype: torch.dtype) -> LowPrecisionLinear:
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.compute_dtype = dtype
        layer.weight = (linear.weight if linear.weight.requires_grad else torch.nn.Parameter(
            linear.weight.detach().to(dtype), requires_grad=False))
        layer.bias = linear.bias  # added in the output's dtype
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.linear(x.to(self.compute_dtype),
                                         self.weight.to(self.compute_dtype)).to(x.dtype)
        return out if self.bias is None else out + self.bias


class CpuDropout(torch.nn.Dropout):
    """nn.Dropout whose mask, on a CPU tensor in training, is drawn by numpy's PCG64 (seeded
    from torch's generator, so `torch.manual_seed` still decides it): the same distribution,
    drawn in about 60% of the time torch's CPU Bernoulli takes. LoRA draws one mask per adapted
    layer's input, every micro-batch: with torch's draws that was the largest cost of a LoRA
    step on the 0.5B model after its matmuls (experiments/bench_training.py profile)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        import numpy as np

        seed = int(torch.randint(0, 2**62, (1,)))
        draws = np.random.default_rng(seed).random(tuple(x.shape), dtype=np.float32)
        keep = (torch.from_numpy(draws) >= self.p).to(x.dtype).mul_(1 / (1 - self.p))
        return x * keep


def fast_lora_dropout(model) -> None:
    """Every LoRA adapter's dropout draws its masks with `CpuDropout`."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, dropout in module.lora_dropout.items():
                if type(dropout) is torch.nn.Dropout:
                    module.lora_dropout[name] = CpuDropout(dropout.p)


def hold_frozen_base(model, dtype: torch.dtype) -> None:
    """Every LoRA-adapted linear layer multiplies in `dtype` (`LowPrecisionLinear`): its frozen
    base held in it, its adapters float32 and cast. Merging adds the adapters into the base at
    save time, in the dtype the student is saved in (the finetune stage's `auto`)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and type(module.base_layer) is torch.nn.Linear:
            module.base_layer = LowPrecisionLinear.from_linear(module.base_layer, dtype)
            for adapters in (module.lora_A, module.lora_B):
                for name, adapter in adapters.items():
                    if type(adapter) is torch.nn.Linear:
                        adapters[name] = LowPrecisionLinear.from_linear(adapter, dtype)


class StepMetrics(L.Callback):
    """One row per optimiser step in `metrics_path` (loss averaged over its micro-batches,
    learning rate, tokens, seconds, attempt), the same values logged as `train/*`, and the
    attempt's totals the stage's stats report (tokens, training time, peak memory)."""

    def __init__(self, metrics_path: Path | None):
        self.metrics_path = metrics_path
        self.resumed_from_step = self._logged_step = 0
        self.attempt = 1
        self.tokens_this_run = 0
        self.train_seconds = 0.0
        self.peak_rss_mib = 0.0
        self._appender: JsonlAppender | None = None
        self._reset_step()

    def _reset_step(self) -> None:
        self._loss_sum = 0.0
        self._micro = self._tokens = self._loss_tokens = 0
        self._lr = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.resumed_from_step = self._logged_step = trainer.global_step
        if trainer.is_global_zero and self.metrics_path is not None:
            rows = resume_jsonl(self.metrics_path)
            kept = [r for r in rows if r["step"] <= self.resumed_from_step]
            self.attempt = max((r["attempt"] for r in rows), default=0) + 1
            atomic_write_text(self.metrics_path,
                              "".join(json.dumps(r) + "\n" for r in kept))
            self._appender = JsonlAppender(self.metrics_path)
        self._started = self._last = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.train_seconds = time.perf_counter() - self._started
        self.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self._appender is not None:
            self._appender.close()
            self._appender = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._lr is None:  # the rate this optimiser step trains with
            self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._loss_sum = self._loss_sum + outputs["step_loss"]
        self._micro += 1
        self._tokens += outputs["tokens"]
        self._loss_tokens += outputs["loss_tokens"]
        step = trainer.global_step
        if step == self._logged_step:
            return  # still accumulating towards this optimiser step
        self._logged_step = step
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        loss_sum, micro = float(self._loss_sum), self._micro
        tokens, loss_tokens = self._tokens, self._loss_tokens
        if trainer.world_size > 1:  # the step's loss over every rank's micro-batches, as DDP trains it
            total = trainer.strategy.reduce(
                torch.tensor([tokens, loss_tokens, loss_sum, micro], dtype=torch.float64,
                             device=pl_module.device), reduce_op="sum")
            tokens, loss_tokens, loss_sum, micro = total.tolist()
            tokens, loss_tokens = int(tokens), int(loss_tokens)
        loss = loss_sum / micro
        self.tokens_this_run += tokens
        pl_module.log_dict({"train/loss": loss, "train/lr": self._lr,
                            "train/tokens_per_s": tokens / max(seconds, 1e-9)},
                           on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        if self._appender is not None:
            self._appender.write({
                "step": step, "epoch": trainer.current_epoch, "loss": round(loss, 6),
                "lr": self._lr, "tokens": tokens, "loss_tokens": loss_tokens,
                "seconds": round(seconds, 4), "attempt": self.attempt})
        self._reset_step()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._last = time.perf_counter()  # validation is not training time per step


# ---------------------------------------------------------------------------- trainer and model


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and the data loader workers, as Lightning does."""
    L.seed_everything(seed, workers=True, verbose=False)


def build_trainer(fcfg, root_dir: Path, checkpoint_dir: Path, precision: str, logger,
                  metrics: StepMetrics) -> L.Trainer:
    """The Trainer the finetune config describes, logging to `logger` (None: no logger) and
    per step to `metrics`. With `checkpoint_every_n_steps`, it writes `last.ckpt` into
    `checkpoint_dir` that often."""
    f = fcfg
    # StepMetrics first: the bar shows the loss it logs.
    callbacks, plugins = [metrics] + ([StepBar()] if f.progress_bar else []), []
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
    umask_modes(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
