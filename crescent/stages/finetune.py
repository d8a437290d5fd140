"""Finetune stage: Lightning SFT of the student on chat data, saved as a merged Hugging Face model.

Data (crescent.methods.sft_data): every conversation is rendered with the student's own chat
template and tokenised once, with the loss on assistant tokens only; batches are padded to their
longest row, or `packing` fills rows of `max_length` with several examples.

Training (crescent.methods.training): full fine-tuning or LoRA (merged before saving), AdamW
with warm-up and a cosine/linear decay; precision, accelerator, devices, strategy and nodes are
Lightning's, from the config, so the same experiment runs on this CPU and on a GPU cluster.
Lightning and torch are imported only once training starts.

Resume: `checkpoints/last.ckpt` (trained weights, optimiser, scheduler, loop counters and the
sampler's place in the epoch) is written atomically every `checkpoint_every_n_steps`; a re-run
continues from it. `metrics.jsonl` holds one row per optimiser step (rows past the checkpoint
are dropped on resume, so every step appears once) with the attempt that trained it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig

from crescent.infra.io import CrescentError, read_jsonl, write_json
from crescent.methods.sft_data import load_conversations

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
METRICS = "metrics.jsonl"


def run(cfg: DictConfig, run_dir: Path) -> Path:
    """Train the student on the SFT conversations and save it into finetune/model, resuming
    from the last checkpoint; a model already saved is kept as it is."""
    run_dir = Path(run_dir)
    out = run_dir / "finetune"
    f = cfg.finetune
    input_path = _check_input(f, run_dir)
    if (out / MODEL_DIR / "config.json").is_file() and (out / "stats.json").is_file():
        return out  # trained and saved; only the DONE marker was missing
    started = time.time()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from crescent.infra.logs import quiet_libraries
    from crescent.methods import training  # Lightning and torch: only now that training starts

    quiet_libraries()  # importing Lightning set its logger back to INFO

    conversations = _read_conversations(f, input_path)
    model_path, tokenizer = _load_student(cfg.student.name)
    precision = training.resolve_precision(f.precision, f.accelerator)
    # finetune.seed replicates the fine-tune alone (shuffle, split, LoRA init): the data
    # stages' cache keys do not hold it, so replicas share their questions and answers.
    seed = cfg.seed if f.seed is None else f.seed
    training.seed_everything(seed)
    data = training.SFTDataModule(conversations, tokenizer, f, seed)
    module = training.SFTModule(f, model_path, training.load_dtype(precision), out / METRICS)
    trainer = training.build_trainer(f, out, out / CHECKPOINT_DIR, precision,
                                     _make_logger(cfg, run_dir))
    _fit(trainer, module, data, out / CHECKPOINT_DIR / LAST_CKPT)
    val_loss = _validate(trainer, module, data, f)
    training.release_optimizer(trainer)
    if trainer.is_global_zero:
        stats = _stats(cfg, input_path, trainer, data, module, precision, val_loss)
        training.save_model(module.model, tokenizer, out / MODEL_DIR, f.mode, cfg.student.dtype)
        _write_stats(out, stats, started)
    # Other ranks (DDP) return only once the model and stats are on disk.
    trainer.strategy.barrier("finetune-saved")
    if trainer.is_global_zero and not f.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------- steps


def _check_input(f: DictConfig, run_dir: Path) -> Path:
    """`finetune.input`, or the answers stage's sft.jsonl of this run; it must exist."""
    input_path = Path(f.input) if f.input else run_dir / "answers" / "sft.jsonl"
    if not input_path.exists():
        raise CrescentError(f"finetune.input: {input_path}: no such file or directory")
    return input_path


def _read_conversations(f: DictConfig, input_path: Path) -> list[list[dict]]:
    conversations = load_conversations(input_path)
    if f.max_examples is not None:
        # The first N, in the answers stage's order: a data-volume sweep's sets are nested.
        conversations = conversations[: f.max_examples]
    if f.fraction < 1:
        conversations = conversations[: max(1, round(f.fraction * len(conversations)))]
    return conversations


def _load_student(name: str):
    """The student's local path and its tokenizer, which must have a chat template."""
    from transformers import AutoTokenizer

    from crescent.infra.models import resolve_model

    model_path = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.chat_template:
        raise CrescentError(f"student {name!r}: tokenizer has no chat template")
    return model_path, tokenizer


def _fit(trainer, module, data, last: Path) -> None:
    """Train, from `last` when an earlier attempt left it."""
    resume = last if last.is_file() else None
    if resume is not None:
        logger.info(f"crescent: finetune: resuming from {resume}")
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    if trainer.interrupted:
        raise CrescentError("finetune: training was interrupted; re-run to resume")


def _validate(trainer, module, data, f: DictConfig) -> float | None:
    """The final validation loss, when there is a validation set."""
    if not (f.val_fraction > 0 and data.val):
        return None
    result = trainer.validate(module, datamodule=data, verbose=False)
    return result[0].get("val/loss") if result else None


def _stats(cfg, input_path, trainer, data, module, precision, val_loss) -> dict:
    """stats.json: the data's counts, steps and tokens over all attempts, losses, speed and
    memory of this attempt, and the model's parameters."""
    import torch

    f = cfg.finetune
    out = Path(module.metrics_path).parent
    rows = list(read_jsonl(out / METRICS)) if (out / METRICS).exists() else []
    per_step = f.batch_size * f.accumulate_grad_batches * trainer.world_size
    peak_gpu = (torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None
    return {
        "input": str(input_path),
        "student": cfg.student.name,
        "mode": f.mode,
        **data.counts,
        "steps": trainer.global_step,
        "epochs": round(trainer.global_step * per_step / max(1, len(data.train)), 3),
        "resumed_from_step": module.resumed_from_step,
        "steps_this_run": sum(1 for r in rows if r["attempt"] == module.attempt),
        "tokens": sum(r["tokens"] for r in rows),
        "loss_tokens": sum(r["loss_tokens"] for r in rows),
        "train_loss_first": rows[0]["loss"] if rows else None,
        "train_loss_final": rows[-1]["loss"] if rows else None,
        "val_loss_final": None if val_loss is None else round(float(val_loss), 6),
        "train_time_s": round(module.train_seconds, 2),
        "tokens_per_s": round(module.tokens_this_run / max(module.train_seconds, 1e-9), 2),
        "peak_rss_mib": round(module.peak_rss_mib, 1),  # process peak up to the end of training
        "peak_gpu_mib": None if peak_gpu is None else round(peak_gpu, 1),
        "trainable_params": sum(p.numel() for p in module.model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in module.model.parameters()),
        "precision": precision,
        "world_size": trainer.world_size,
    }


def _write_stats(out: Path, stats: dict, started: float) -> None:
    stats["wall_time_s"] = round(time.time() - started, 2)
    write_json(out / "stats.json", stats)
    val = stats["val_loss_final"]
    logger.info(f"crescent: finetune: {stats['steps']} steps, train loss "
                f"{stats['train_loss_first']} -> {stats['train_loss_final']}"
                f"{'' if val is None else f', val loss {val}'}, {stats['tokens_per_s']} tokens/s")


def _make_logger(cfg: DictConfig, run_dir: Path):
    """Lightning's WandbLogger on the job's W&B run (same id file, project and group as
    crescent.infra.tracking), so the training curves land beside the stage stats."""
    if cfg.logger.name != "wandb":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    from lightning.pytorch.loggers import WandbLogger

    from crescent.infra.tracking import run_group, run_id

    return WandbLogger(project=cfg.logger.project, id=run_id(run_dir), name=run_dir.name,
                       save_dir=str(run_dir), mode=cfg.logger.mode, group=run_group(cfg),
                       tags=list(cfg.logger.tags), resume="allow")
