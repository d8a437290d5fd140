"""Pipeline runner: runs `cfg.stages` in order, each in `<run dir>/<stage>/`, skipping finished ones.

A stage is a module with `run(cfg, run_dir) -> Path` that writes its artefacts and
`stats.json` into its stage dir and resumes from whatever partial output it finds there.
The runner writes the `DONE` marker, atomically and last, once the stage has returned.

Artefact cache: with `cache_dir` set, a stage's dir is a link to `<cache_dir>/<stage>/<key>`,
where the key hashes the config that determines the stage's output (its own config keys and
its upstream stage's key, or the content of an explicit input file). Sweep points that share
upstream settings therefore share those stages' outputs: a learning-rate sweep generates its
questions and answers once. A lock per key keeps parallel sweep jobs from running one stage
twice at the same time.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from crescent.infra.engines import release_engines, share_engines
from crescent.infra.io import CrescentError, atomic_write_text, read_json, write_json
from crescent.infra.provenance import provenance
from crescent.infra.tracking import Tracker


@dataclass(frozen=True)
class Stage:
    module: str  # holds `run(cfg, run_dir)`
    keys: tuple[str, ...] = ()  # config keys that determine the stage's output
    upstream: Optional[str] = None  # the stage whose output it reads by default
    input_key: Optional[str] = None  # config key of an explicit input that replaces upstream
    engine: bool = False  # generates with the `engine` and `model` configs (one engine shared)


# The one stage table, in data-flow order.
STAGES = {
    "questions": Stage("crescent.stages.questions",
                       ("seed", "model", "engine", "domain", "dedup", "questions"), engine=True),
    "answers": Stage("crescent.stages.answers",
                     ("seed", "model", "engine", "domain", "voting", "answers", "eval.data_dir"),
                     upstream="questions", input_key="answers.input", engine=True),
    "finetune": Stage("crescent.stages.finetune", ("seed", "student", "finetune"),
                      upstream="answers", input_key="finetune.input"),
    "evaluate": Stage("crescent.stages.evaluate", ("model", "engine", "eval"), upstream="finetune"),
}
DONE = "DONE"
STATS = "stats.json"
KEY_FILE = "cache_key.json"


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage


def is_done(run_dir: Path, stage: str) -> bool:
    return (stage_dir(run_dir, stage) / DONE).exists()


def load_stage(name: str) -> ModuleType:
    if name not in STAGES:
        raise CrescentError(f"stages: unknown stage {name!r} (known: {', '.join(STAGES)})")
    module = STAGES[name].module
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:  # a missing dependency inside the stage: not ours to hide
            raise
        raise CrescentError(f"stage {name!r} is not implemented yet") from None


def stage_key(cfg: DictConfig, name: str) -> tuple[str, dict]:
    """The cache key of a stage's output, and what it hashes."""
    stage = STAGES[name]
    parts = {}
    for key in stage.keys:
        value = OmegaConf.select(cfg, key)
        parts[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) \
            else value
    explicit = OmegaConf.select(cfg, stage.input_key) if stage.input_key else None
    if explicit:
        # What counts is the input's content, not where it lies.
        group, field_name = stage.input_key.split(".")
        parts[group].pop(field_name)
        parts["input_sha256"] = content_hash(Path(explicit), stage.input_key)
    elif stage.upstream:
        parts["upstream"] = stage_key(cfg, stage.upstream)[0]
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(),
                             digest_size=8)
    return digest.hexdigest(), parts


def content_hash(path: Path, what: str) -> str:
    """sha256 of a file, or of every file (name and bytes) under a directory."""
    if not path.exists():
        raise CrescentError(f"{what}: {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_target(cfg: DictConfig, run_dir: Path, name: str) -> Optional[Path]:
    """Where the stage's output lives in the cache; None when the cache is off or the run dir
    already holds a real stage dir (made with the cache off)."""
    cache = OmegaConf.select(cfg, "cache_dir", default=None)
    out = stage_dir(run_dir, name)
    if not cache or (out.is_dir() and not out.is_symlink()):
        return None
    return Path(cache).resolve() / name / stage_key(cfg, name)[0]


def link(out: Path, target: Path) -> None:
    """Point the run's stage dir at the cache entry (relative, so the tree can move)."""
    if out.is_symlink() and out.resolve() == target.resolve():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.link")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(os.path.relpath(target, out.parent), tmp)
    os.replace(tmp, out)


def run_pipeline(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> None:
    from filelock import FileLock, Timeout

    # Resolve every stage before running any, so a typo fails now and not after hours.
    modules = {name: load_stage(name) for name in cfg.stages}
    # Finished upstream outputs of this config join the run dir, so `stages=[finetune]`
    # finds the answers an earlier run (or another sweep point) produced.
    for name in STAGES:
        target = None if name in modules else cache_target(cfg, run_dir, name)
        if target is not None and (target / DONE).exists():
            link(stage_dir(run_dir, name), target)

    info = provenance(cfg) if OmegaConf.select(cfg, "model.name") else {}
    tracker.record_provenance(info)
    summary = {}
    share_engines()  # questions and answers generate with one engine: one model load
    for name, module in modules.items():
        if not STAGES[name].engine:
            release_engines()  # fine-tuning and lm-eval get its memory
        out, target = stage_dir(run_dir, name), cache_target(cfg, run_dir, name)
        lock = None
        if target is not None:
            target.mkdir(parents=True, exist_ok=True)
            write_json(target / KEY_FILE, stage_key(cfg, name)[1])
            link(out, target)
            lock = FileLock(f"{target}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                print(f"crescent: {name}: another job is running it in {target}, waiting",
                      flush=True)
                lock.acquire()
        try:
            summary[name] = _run_stage(name, module, cfg, run_dir, tracker, info)
        finally:
            if lock is not None:
                lock.release()
        summary[name]["cache"] = str(target) if target is not None else None
        write_json(Path(run_dir) / "pipeline.json", summary)
    release_engines()
    tracker.log_summary(Path(run_dir), summary)


def _run_stage(name: str, module: ModuleType, cfg: DictConfig, run_dir: Path,
               tracker: Tracker, info: dict) -> dict:
    """Run one stage unless it is done; returns whether it ran and how long it took."""
    out = stage_dir(run_dir, name)
    if is_done(run_dir, name):
        print(f"crescent: {name}: already done in {out}, skipped", flush=True)
        stats = read_json(out / STATS)
        tracker.log_stats(name, {**_metrics(stats), "reused": 1})
        return {"reused": True, "wall_time_s": stats.get("wall_time_s")}
    out.mkdir(parents=True, exist_ok=True)
    print(f"crescent: {name}: running in {out}", flush=True)
    started = time.time()
    module.run(cfg, run_dir)
    stats_path = out / STATS
    if not stats_path.is_file():
        raise CrescentError(f"stage {name!r} finished without writing {stats_path}")
    stats = read_json(stats_path)
    stats.setdefault("wall_time_s", round(time.time() - started, 2))
    stats["provenance"] = info
    write_json(stats_path, stats)
    tracker.log_stats(name, {**_metrics(stats), "reused": 0})
    atomic_write_text(out / DONE, time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    print(f"crescent: {name}: done in {stats['wall_time_s']:.1f} s", flush=True)
    return {"reused": False, "wall_time_s": stats["wall_time_s"]}


def _metrics(stats: dict) -> dict:
    """Stats as W&B metrics; provenance goes to the W&B config instead."""
    return {k: v for k, v in stats.items() if k != "provenance"}
