"""Pipeline runner: runs `cfg.stages` in order, each in `<run dir>/<stage>/`, skipping finished ones.

A stage is a module with `run(cfg, run_dir) -> Path` that writes its artefacts and
`stats.json` into its stage dir and resumes from whatever partial output it finds there, and
optionally `preflight(cfg)`, run for every listed stage before the first one starts.
The runner writes the `DONE` marker, atomically and last, once the stage has returned.

Artefact cache: with `cache_dir` set, a stage's dir is a link to `<cache_dir>/<stage>/<key>`,
where the key hashes the config that determines the stage's output (its own config keys and
its upstream stage's key, or the content of an explicit input file). Sweep points that share
upstream settings therefore share those stages' outputs: a learning-rate sweep generates its
questions and answers once. A lock per key keeps parallel sweep jobs from running one stage
twice at the same time.

Stale outputs: each stage has a `version` in the stage table, bumped whenever the same config
would now produce different output (extraction rules, cleaning, templates, task files). It is
part of the cache key, so a cache entry made by another version is never reused: the stage is
recomputed in a new entry. A stage dir kept inside the run dir (`cache_dir=null`) records its
version in `stats.json`; one made by another version stops the run with a one-line message
naming `accept_stale=true`, the override that reuses it anyway.

Benchmark data (`eval.data_dir`, `$CRESCENT_DATA` or the crescent cache) enters a key as the
sha256 of the files the stage reads (crescent/infra/data.py), never as a machine path.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from crescent.config import samples_per_question
from crescent.infra.engines import release_engines
from crescent.infra.io import CrescentError, atomic_write_text, read_json, write_json
from crescent.infra.provenance import provenance
from crescent.infra.tracking import Tracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    module: str  # holds `run(cfg, run_dir)`
    keys: tuple[str, ...] = ()  # config keys that determine the stage's output
    upstream: Optional[str] = None  # the stage whose output it reads by default
    input_key: Optional[str] = None  # config key of an explicit input that replaces upstream
    # Bump when the same config would now give other output (rules, cleaning, templates).
    version: int = 1
    # Benchmark files read: a config key holding a list of them, or "*" for every pinned one.
    data: Optional[str] = None


# Stages that generate with `cfg.engine` and `cfg.model`: they share one engine (make_engine),
# which any other stage releases first.
ENGINE_STAGES = ("questions", "answers")

# The one stage table, in data-flow order.
STAGES = {
    "questions": Stage("crescent.stages.questions",
                       ("seed", "model", "engine", "domain", "dedup", "questions"), version=2),
    # The answers stage votes over samples drawn under SAMPLING (below): its own key holds
    # the vote's settings and the samples' key, so a sweep over voting.* shares the samples.
    "answers": Stage("crescent.stages.answers", ("domain", "voting"), upstream="samples",
                     version=1),
    # finetune.seed lives in the finetune group: replicas of a fine-tune share the data above.
    "finetune": Stage("crescent.stages.finetune", ("seed", "student", "finetune"),
                      upstream="answers", input_key="finetune.input", version=1),
    "evaluate": Stage("crescent.stages.evaluate", ("model", "engine", "eval"), upstream="finetune",
                      version=1, data="*"),
}
# Cache entries that are not stages of their own, keyed like one.
ENTRIES = {
    # The answers stage's samples (answers.samples of them per question): everything that
    # decides them and nothing of the vote.
    "samples": Stage("crescent.stages.answers", ("seed", "model", "engine", "domain", "answers"),
                     upstream="questions", input_key="answers.input", version=2,
                     data="answers.decontaminate"),
    # The base model's scores: the same for every sweep point that fine-tunes the same student.
    "evaluate_base": Stage("crescent.stages.evaluate", ("student", "engine", "eval"), version=1,
                           data="*"),
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
    """The cache key of a stage's (or another cache entry's) output, and what it hashes."""
    stage = STAGES[name] if name in STAGES else ENTRIES[name]
    parts = {}
    for key in stage.keys:
        value = OmegaConf.select(cfg, key)
        parts[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) \
            else value
    if name == "samples" and isinstance(parts.get("answers"), dict):  # None means voting.k
        parts["answers"]["samples"] = samples_per_question(cfg)
    explicit = OmegaConf.select(cfg, stage.input_key) if stage.input_key else None
    if explicit:
        # What counts is the input's content, not where it lies.
        group, field_name = stage.input_key.split(".")
        parts[group].pop(field_name)
        parts["input_sha256"] = content_hash(Path(explicit), stage.input_key)
    elif stage.upstream:
        parts["upstream"] = stage_key(cfg, stage.upstream)[0]
    if stage.data:
        parts["benchmarks"] = _data_identity(cfg, stage.data)
    if isinstance(parts.get("eval"), dict):
        parts["eval"].pop("data_dir", None)  # a machine path: the content hashes stand for it
    parts["version"] = stage.version
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(),
                             digest_size=8)
    return digest.hexdigest(), parts


def entry_dir(cfg: DictConfig, name: str) -> Path | None:
    """The cache dir of a non-stage entry (`ENTRIES`); None when the cache is off."""
    cache = OmegaConf.select(cfg, "cache_dir", default=None)
    return Path(cache).resolve() / name / stage_key(cfg, name)[0] if cache else None


def locked(target: Path, what: str):
    """An acquired lock on a cache entry; a job that finds it held waits for the other."""
    from filelock import FileLock, Timeout

    lock = FileLock(f"{target}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("crescent: %s: another job is running it in %s, waiting", what, target)
        lock.acquire()
    return lock


def _data_identity(cfg: DictConfig, which: str) -> dict[str, str]:
    from crescent.infra import data

    rels = data.PINS if which == "*" else (OmegaConf.select(cfg, which) or [])
    return data.identity(OmegaConf.select(cfg, "eval.data_dir", default=None), list(rels))


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


def run_pipeline(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict:
    """Run `cfg.stages`; returns {stage: {reused, wall_time_s, cache}} (also pipeline.json)."""
    # Resolve every stage before running any, so a typo fails now and not after hours.
    modules = {name: load_stage(name) for name in cfg.stages}
    _preflight(cfg, modules)
    # Finished upstream outputs of this config join the run dir, so `stages=[finetune]`
    # finds the answers an earlier run (or another sweep point) produced.
    for name in STAGES:
        target = None if name in modules else cache_target(cfg, run_dir, name)
        if target is not None and (target / DONE).exists():
            link(stage_dir(run_dir, name), target)

    info = provenance(cfg) if OmegaConf.select(cfg, "model.name") else {}
    tracker.record_provenance(info)
    summary = {}
    try:
        for name, module in modules.items():
            if name not in ENGINE_STAGES:
                release_engines()  # the generation model's memory goes to fine-tuning, scoring
            summary[name] = _run_in_entry(name, module, cfg, run_dir, tracker, info)
            write_json(Path(run_dir) / "pipeline.json", summary)
    finally:
        release_engines()
    tracker.log_summary(Path(run_dir), summary)
    return summary


def _run_in_entry(name: str, module: ModuleType, cfg: DictConfig, run_dir: Path,
                  tracker: Tracker, info: dict) -> dict:
    """Run one stage in its cache entry (linked from the run dir, locked while it runs)."""
    out, target = stage_dir(run_dir, name), cache_target(cfg, run_dir, name)
    lock = None
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
        write_json(target / KEY_FILE, stage_key(cfg, name)[1])
        link(out, target)
        lock = locked(target, name)
    try:
        result = _run_stage(name, module, cfg, run_dir, tracker, info)
    finally:
        if lock is not None:
            lock.release()
    result["cache"] = str(target) if target is not None else None
    return result


def _preflight(cfg: DictConfig, modules: dict[str, ModuleType]) -> None:
    """Each stage's optional `preflight(cfg)` (benchmark files there, ...) runs before the
    first stage starts, so a missing file fails now and not after an hour of generation."""
    for module in modules.values():
        check = getattr(module, "preflight", None)
        if check is not None:
            check(cfg)


def _run_stage(name: str, module: ModuleType, cfg: DictConfig, run_dir: Path,
               tracker: Tracker, info: dict) -> dict:
    """Run one stage unless it is done; returns whether it ran and how long it took."""
    out = stage_dir(run_dir, name)
    if is_done(run_dir, name):
        stats = read_json(out / STATS)
        _check_version(cfg, name, out, stats)
        logger.info("crescent: %s: already done in %s, skipped", name, out)
        tracker.log_stats(name, {**_metrics(stats), "reused": 1})
        return {"reused": True, "wall_time_s": stats.get("wall_time_s")}
    out.mkdir(parents=True, exist_ok=True)
    logger.info("crescent: %s: running in %s", name, out)
    started = time.time()
    module.run(cfg, run_dir)
    stats_path = out / STATS
    if not stats_path.is_file():
        raise CrescentError(f"stage {name!r} finished without writing {stats_path}")
    stats = read_json(stats_path)
    stats.setdefault("wall_time_s", round(time.time() - started, 2))
    stats["stage_version"] = STAGES[name].version
    stats["provenance"] = info
    write_json(stats_path, stats)
    tracker.log_stats(name, {**_metrics(stats), "reused": 0})
    atomic_write_text(out / DONE, time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    logger.info("crescent: %s: done in %.1f s", name, stats["wall_time_s"])
    return {"reused": False, "wall_time_s": stats["wall_time_s"]}


def _check_version(cfg: DictConfig, name: str, out: Path, stats: dict) -> None:
    """A done stage made by another stage version is not reused unless the user says so.
    (Cache entries never get here: the version is in their key.) Outputs from before stage
    versions existed count as version 1."""
    made, now = stats.get("stage_version", 1), STAGES[name].version
    if made == now:
        return
    if not OmegaConf.select(cfg, "accept_stale", default=False):
        raise CrescentError(
            f"{name}: {out} was made by stage version {made}, this code writes version {now}; "
            f"delete it to recompute, or reuse it as it is with accept_stale=true")
    logger.warning("crescent: %s: reusing %s made by stage version %s (now %s): accept_stale=true",
                name, out, made, now)


def _metrics(stats: dict) -> dict:
    """Stats as W&B metrics; provenance goes to the W&B config instead."""
    return {k: v for k, v in stats.items() if k != "provenance"}
