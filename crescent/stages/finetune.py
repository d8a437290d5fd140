"""Finetune stage: Lightning training of the student on the answers stage's data, saved as a
merged Hugging Face model.

The objective (`finetune.objective`, crescent/objectives/; `sft` by default) supplies the data
and the loss; crescent/methods/training.py the rest: full fine-tuning or LoRA (merged before
saving), AdamW with warm-up and a cosine/linear decay; precision, accelerator, devices, strategy
and nodes are Lightning's, from the config, so the same experiment runs on this CPU and on a GPU
cluster. Lightning and torch are imported only once training starts.

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

from omegaconf import DictConfig, OmegaConf

from crescent import cache
from crescent.artefacts import MODEL_DIR, MODEL_RECORD
from crescent.cache import STATS, Stage
from crescent.errors import CrescentError
from crescent.infra.io import read_json, read_jsonl, write_json
from crescent.infra.precision import lora_base_dtype, resolve_precision

logger = logging.getLogger(__name__)


def _frozen_base_key(cfg: DictConfig) -> str:
    """`finetune.lora_base_dtype` as the key holds it: under LoRA the dtype it resolves to on
    this machine, always, so that LoRA entries made before it existed (float32, dropout masks
    from torch's generator, not CpuDropout's) are trained anew; `auto`, left out of the key,
    for full fine-tuning, which has no frozen base."""
    return lora_base_dtype(cfg.finetune, cfg.student.dtype) or "auto"


def _objective_reads(cfg: DictConfig) -> dict | None:
    """The config keys the objective declares it reads besides finetune.* (its `reads`), with
    their values: in the key, so that changing one trains anew; None when it reads none."""
    from crescent.registry import OBJECTIVES

    # Plug-ins are imported before any key is made; a built-in not imported yet (sft, dpo)
    # reads nothing beyond finetune.*, and importing it (torch, Lightning) would cost seconds.
    reads = getattr(OBJECTIVES.loaded(cfg.finetune.objective), "reads", ())
    return {key: cache.plain(OmegaConf.select(cfg, key)) for key in reads} or None


# finetune.seed lives in the finetune group: replicas of a fine-tune share the data above.
# padding_free runs the same examples per step with the same loss (only the summation
# order differs): entries made with padding stay valid for it.
STAGE = Stage("finetune", ("seed", "student", "finetune"), upstream="answers",
              input_key="finetune.input", outputs=("model",), version=1, distributed=True,
              resolved={"finetune.lora_base_dtype": _frozen_base_key,
                        "finetune.reads": _objective_reads},
              added=("finetune.objective", "finetune.init", "finetune.beta", "finetune.margin_weight",
                     "finetune.sft_weight", "finetune.padding_free", "finetune.lora_base_dtype",
                     "finetune.subset", "finetune.reads"))
CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
METRICS = "metrics.jsonl"


def preflight(cfg: DictConfig) -> None:
    """Before any stage: the student is there, and an explicit `finetune.input` reads as the
    objective's examples."""
    from crescent.infra.models import check_model

    check_model(cfg.student.name)
    if str(cfg.finetune.precision).startswith("transformer-engine"):
        import importlib.util

        if importlib.util.find_spec("transformer_engine") is None:
            raise CrescentError(f"finetune.precision={cfg.finetune.precision}: NVIDIA's "
                                f"transformer_engine is not installed here (it needs a GPU)")
    if cfg.finetune.input and cache.provider(cfg, STAGE.name) is None:  # a file, not a stage
        from crescent.registry import OBJECTIVES

        OBJECTIVES.get(cfg.finetune.objective).load_examples(Path(cfg.finetune.input))


def run(cfg: DictConfig, run_dir: Path) -> Path:
    """Train the student (or, with `finetune.init`, another objective's fine-tune of it) on
    the objective's examples and save it into finetune/model."""
    run_dir = Path(run_dir)
    start = _initial_model(cfg, run_dir) if cfg.finetune.init else cfg.student.name
    return train(cfg, run_dir, run_dir / STAGE.name, start)


def train(cfg: DictConfig, run_dir: Path, out: Path, start: str) -> Path:
    """Fine-tune `start` into `out/model`, resuming from the last checkpoint; a model already
    saved is kept as it is."""
    from crescent.registry import OBJECTIVES

    f = cfg.finetune
    objective = OBJECTIVES.get(f.objective)
    input_path = _check_input(cfg, run_dir, objective.input_file)
    if _saved(out):
        return out  # trained and saved; only the DONE marker was missing
    started = time.time()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from crescent.infra.logs import quiet_libraries
    from crescent.methods import training  # Lightning and torch: only now that training starts

    quiet_libraries()  # importing Lightning set its logger back to INFO

    # finetune.seed replicates the fine-tune alone (shuffle, split, LoRA init, a seeded subset):
    # the data stages' cache keys do not hold it, so replicas share their questions and answers.
    seed = cfg.seed if f.seed is None else f.seed
    examples = _select(f, objective.load_examples(input_path), seed)
    model_path, tokenizer = _load_student(start)
    precision = resolve_precision(f.precision, f.accelerator)
    training.seed_everything(seed)
    data = objective.data_module(examples, tokenizer, f, seed)
    module = objective(f, model_path, training.load_dtype(precision), out,
                       base_dtype=lora_base_dtype(f, cfg.student.dtype))
    module.context = data.context = _context(cfg, run_dir)
    metrics = training.StepMetrics(out / METRICS)
    trainer = training.build_trainer(f, out, out / CHECKPOINT_DIR, precision,
                                     _make_logger(cfg, run_dir), metrics)
    _fit(trainer, module, data, out / CHECKPOINT_DIR / LAST_CKPT)
    val_loss = _validate(trainer, module, data, f)
    training.release_optimizer(trainer)
    if trainer.is_global_zero:
        stats = _stats(cfg, input_path, trainer, data, module, metrics, precision, val_loss)
        stats["start"] = start  # the model trained: the student, or finetune.init's model
        training.save_model(module.model, tokenizer, out / MODEL_DIR, f.mode, cfg.student.dtype)
        write_json(out / MODEL_RECORD, cache.fingerprints(out / MODEL_DIR))  # `_saved` reads it
        _write_stats(out, stats, started)
    # Other ranks (DDP) return only once the model and stats are on disk.
    trainer.strategy.barrier("finetune-saved")
    if trainer.is_global_zero and not f.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return out


def _context(cfg: DictConfig, run_dir: Path):
    """What the objective sees besides finetune.* (crescent/objectives/__init__.py)."""
    from crescent.domains import answer_format
    from crescent.objectives import ObjectiveContext

    return ObjectiveContext(cfg, run_dir, answer_format(cfg.domain.answer_type))


def _saved(out: Path) -> bool:
    """Whether `out` holds the model this stage saved, as its stats recorded it (a crash
    before DONE was written). A model the stats do not vouch for is trained anew, never
    sealed as it is."""
    if not ((out / MODEL_DIR).is_dir() and (out / STATS).is_file()):
        return False
    try:
        problem = cache.differs(out / MODEL_DIR, read_json(out / MODEL_RECORD))
    except (OSError, CrescentError, AttributeError):
        problem = f"no readable {MODEL_RECORD} records it"
    if problem is None:
        return True
    logger.warning("crescent: warning: finetune: %s is not the model this stage saved (%s): "
                   "training it anew", out / MODEL_DIR, problem)
    (out / STATS).unlink()
    shutil.rmtree(out / MODEL_DIR)
    return False


def _initial_model(cfg: DictConfig, run_dir: Path) -> str:
    """The model `finetune.init` names: this config's fine-tune with objective=init (SFT on the
    same data, say), trained first unless it is there. With the cache on it is that config's
    own finetune entry, so a study's SFT row and its SFT-then-DPO row train it once."""
    from crescent.registry import OBJECTIVES

    # The first fine-tune as its own config says it: the answers stage's files (finetune.input,
    # if any, is the last objective's) and none of the last objective's own settings.
    first = OmegaConf.merge(cfg, {"finetune": {
        "objective": cfg.finetune.init, "init": None, "input": None}})
    first.finetune.options = OBJECTIVES.options(cfg.finetune.init, {})  # the init's own, not ours
    entry = cache.entry(first, run_dir, STAGE.name)
    if entry is None:  # the cache is off: it lives in this stage dir
        where = run_dir / STAGE.name / f"init_{cfg.finetune.init}"
        train(first, run_dir, where, first.student.name)
        return str(where / MODEL_DIR)
    def build(where: Path) -> dict:
        train(first, run_dir, where, first.student.name)
        return cache.stamp(where, first, STAGE)

    if entry.reuse_or_build(f"finetune: init={cfg.finetune.init}", build) is None:
        logger.info("crescent: finetune: starting from %s", entry.dir / MODEL_DIR)
    return str(entry.dir / MODEL_DIR)


# ------------------------------------------------------------------------------------- steps


def _check_input(cfg: DictConfig, run_dir: Path, default: str) -> Path:
    """`finetune.input` (a file), or the objective's `default` file of the stage it reads in
    this run (the answers stage, a filter listed before it, or the stage `finetune.input`
    names); it must exist."""
    if cache.provider(cfg, STAGE.name) is None:
        input_path = Path(cfg.finetune.input)
    else:
        input_path = cache.input_path(cfg, run_dir, STAGE.name, default)
    if not input_path.exists():
        raise CrescentError(f"finetune.input: {input_path}: no such file or directory")
    return input_path


def _select(f: DictConfig, examples: list, seed: int) -> list:
    """The examples trained on: `max_examples` of them, then the `fraction` of those. The first
    ones, in the answers stage's order (a data-volume sweep's sets are nested), or with
    `subset=seeded` a sample drawn with `seed` (kept in input order): each replica its own."""
    if str(f.subset) == "seeded" and (f.max_examples is not None or f.fraction < 1):
        import random

        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        examples = [examples[i] for i in sorted(order[: _kept(f, len(examples))])]
    else:
        examples = examples[: _kept(f, len(examples))]
    return examples


def _kept(f: DictConfig, available: int) -> int:
    """How many examples `max_examples` and then `fraction` keep of `available`."""
    n = min(available, f.max_examples) if f.max_examples is not None else available
    return max(1, round(f.fraction * n)) if f.fraction < 1 else n


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
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    except Exception as e:
        if resume is None or trainer.global_step:  # not the checkpoint: it restored a step
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CrescentError(f"finetune: {resume} does not load ({type(e).__name__}: {first}); "
                            f"delete it to train from the start: rm {resume}") from None
    except SystemExit:
        # On Ctrl-C Lightning shuts down "gracefully" and calls sys.exit(1) itself.
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt


def _validate(trainer, module, data, f: DictConfig) -> float | None:
    """The final validation loss, when there is a validation set."""
    if not (f.val_fraction > 0 and data.val):
        return None
    result = trainer.validate(module, datamodule=data, verbose=False)
    return result[0].get("val/loss") if result else None


def _stats(cfg, input_path, trainer, data, module, metrics, precision, val_loss) -> dict:
    """stats.json: the data's counts, steps and tokens over all attempts, losses, speed and
    memory of this attempt, and the model's parameters."""
    import torch

    f = cfg.finetune
    path = metrics.metrics_path
    rows = list(read_jsonl(path)) if path.exists() else []
    per_step = f.batch_size * f.accumulate_grad_batches * trainer.world_size
    peak_gpu = (torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None
    return {
        "input": str(input_path),
        "student": cfg.student.name,
        "objective": f.objective,
        "mode": f.mode,
        **data.counts,
        "steps": trainer.global_step,
        "epochs": round(trainer.global_step * per_step / max(1, len(data.train)), 3),
        "resumed_from_step": metrics.resumed_from_step,
        "steps_this_run": sum(1 for r in rows if r["attempt"] == metrics.attempt),
        "tokens": sum(r["tokens"] for r in rows),
        "loss_tokens": sum(r["loss_tokens"] for r in rows),
        "train_loss_first": rows[0]["loss"] if rows else None,
        "train_loss_final": rows[-1]["loss"] if rows else None,
        "val_loss_final": None if val_loss is None else round(float(val_loss), 6),
        "train_time_s": round(metrics.train_seconds, 2),
        "tokens_per_s": round(metrics.tokens_this_run / max(metrics.train_seconds, 1e-9), 2),
        "peak_rss_mib": round(metrics.peak_rss_mib, 1),  # process peak up to the end of training
        "peak_gpu_mib": None if peak_gpu is None else round(peak_gpu, 1),
        "trainable_params": sum(p.numel() for p in module.model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in module.model.parameters()),
        "precision": precision,
        "lora_base_dtype": module.base_dtype,  # None: full fine-tuning
        "world_size": trainer.world_size,
    }


def _write_stats(out: Path, stats: dict, started: float) -> None:
    stats["wall_time_s"] = round(time.time() - started, 2)
    write_json(out / STATS, stats)
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


def headline(stats: dict) -> str:
    """The summary's line for this stage."""
    from crescent.summary import num

    return (f"{stats.get('steps')} steps, train loss {num(stats.get('train_loss_first'))} -> "
            f"{num(stats.get('train_loss_final'))}")
