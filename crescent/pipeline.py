"""Pipeline runner: runs `cfg.stages` in order, each in `<run dir>/<stage>/`, skipping finished ones.

A stage (registered in crescent/registry.py's `STAGES`, declared as crescent/cache.py says) is a
module with `run(cfg, run_dir) -> Path` that writes its artefacts and `stats.json` into its
stage dir and resumes from whatever partial output it finds there, and optionally
`preflight(cfg)`, run for every listed stage before the first one starts, and
`outdated(cfg, run_dir) -> str | None`, why a finished stage dir no longer holds what this
config asks for (inputs its key cannot see, such as whether a fine-tune existed yet).
The runner writes the `DONE` marker, atomically and last, once the stage has returned. With the
cache on, the stage dir is a link to the stage's cache entry, locked while the stage runs.

A stage dir kept inside the run dir (`cache_dir=null`) records its version in `stats.json`; one
made by another version stops the run with a one-line message naming `accept_stale=true`, the
override that reuses it anyway. (Cache entries never get there: the version is in their key.)
Nor is a finished stage reused that drew or trained in another precision than `model.dtype` /
`student.dtype` resolve to here (`auto` differs between machines; its key holds `auto`).
"""

from __future__ import annotations

import functools
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig, OmegaConf

from crescent import cache
from crescent.errors import CrescentError
from crescent.infra.io import read_json, write_json
from crescent.infra.logs import rank
from crescent.infra.precision import precision_line
from crescent.infra.provenance import provenance
from crescent.infra.tracking import Tracker

logger = logging.getLogger(__name__)


def run_pipeline(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> dict:
    """Run `cfg.stages`; returns {stage: {reused, wall_time_s, cache}} (also pipeline.json)."""
    from crescent.engines import release_engines

    modules = preflight(cfg)
    if rank() != 0:
        # Another rank of a multi-process fine-tune, started by Lightning (or torchrun) with
        # the same command once rank 0 reached the fine-tune: it joins that stage in rank 0's
        # dir, which rank 0 holds the lock of, and leaves the rest (and pipeline.json) to it.
        for module in (m for m in modules.values() if m.STAGE.distributed):
            module.run(cfg, run_dir)
        return {}
    # Finished outputs the listed stages read join the run dir, so `stages=[finetune]` finds
    # the answers an earlier run (or another sweep point) produced.
    for name in cache.upstream_stages(cfg, list(modules)):
        found = cache.entry(cfg, run_dir, name)
        if found is not None and found.done:
            cache.check_intact(name, found.dir)
            cache.link(Path(run_dir) / name, found.dir)

    info = provenance(cfg) if OmegaConf.select(cfg, "model.name") else {}
    if info:
        logger.info("crescent: %s", precision_line(info["precision"]))
    tracker.record_provenance(info)
    summary = {}
    try:
        for name, module in modules.items():
            if not module.STAGE.generates:
                release_engines()  # the generation model's memory goes to fine-tuning, scoring
            summary[name] = _run_in_entry(module, cfg, Path(run_dir), tracker, info)
            write_json(Path(run_dir) / "pipeline.json", summary)
    finally:
        release_engines()
    tracker.log_summary(Path(run_dir), summary)
    return summary


def _run_in_entry(module: ModuleType, cfg: DictConfig, run_dir: Path, tracker: Tracker,
                  info: dict) -> dict:
    """Run one stage in its cache entry (linked from the run dir, locked while it runs)."""
    name = module.STAGE.name
    found = cache.entry(cfg, run_dir, name)
    if found is not None:
        cache.link(run_dir / name, found.open().dir)
    with found.locked(name) if found is not None else nullcontext():
        result = _run_stage(module, cfg, run_dir, tracker, info)
    result["cache"] = str(found.dir) if found is not None else None
    return result


def preflight(cfg: DictConfig) -> dict[str, ModuleType]:
    """The listed stages' modules, each loaded and its optional `preflight(cfg)` (benchmark
    files there, ...) run before the first stage starts: a typo or a missing file fails now
    and not after an hour of generation."""
    from crescent.registry import ENGINES

    modules = {name: cache.load_stage(name) for name in cfg.stages}
    cache.check_wiring(cfg)
    for module in modules.values():
        check = getattr(module, "preflight", None)
        if check is not None:
            check(cfg)
    if any(module.STAGE.generates for module in modules.values()):
        ENGINES.get(cfg.engine.name).preflight(cfg.engine)
    return modules


def _run_stage(module: ModuleType, cfg: DictConfig, run_dir: Path, tracker: Tracker,
               info: dict) -> dict:
    """Run one stage unless it is done; returns whether it ran and how long it took."""
    stage = module.STAGE
    out = run_dir / stage.name
    if cache.is_done(out):
        cache.check_intact(stage.name, out)
        stats = read_json(out / cache.STATS)
        _check_version(cfg, stage, out, stats)
        _check_key(cfg, stage, out, stats)
        _check_precision(cfg, stage, out, stats, info)
        reason = module.outdated(cfg, run_dir) if hasattr(module, "outdated") else None
        if reason is None:
            logger.info("crescent: %s: already done in %s, skipped", stage.name, out)
            tracker.log_stats(stage.name, {**_metrics(stats), "reused": 1})
            return {"reused": True, "wall_time_s": stats.get("wall_time_s")}
        logger.warning("crescent: %s: %s holds older output (%s): running it again", stage.name,
                       out, reason)
        (out / cache.DONE).unlink()
    out.mkdir(parents=True, exist_ok=True)
    _warn_if_cpu_busy()
    logger.info("crescent: %s: running in %s", stage.name, out)
    started = time.time()
    module.run(cfg, run_dir)
    stats_path = out / cache.STATS
    if not stats_path.is_file():
        raise CrescentError(f"stage {stage.name!r} finished without writing {stats_path}")
    stats = read_json(stats_path)
    stats = cache.stamp(out, cfg, stage, provenance=info,  # the key: what `_check_key` compares
                        wall_time_s=stats.get("wall_time_s", round(time.time() - started, 2)))
    tracker.log_stats(stage.name, {**_metrics(stats), "reused": 0})
    cache.mark_done(out)
    logger.info("crescent: %s: done in %.1f s", stage.name, stats["wall_time_s"])
    return {"reused": False, "wall_time_s": stats["wall_time_s"]}


@functools.cache
def _warn_if_cpu_busy() -> None:
    """Once a process, before the first stage it runs: on a machine without a GPU, a line when
    other processes already keep the CPU busy (crescent/infra/load.py)."""
    import torch

    from crescent.infra.load import busy_warning

    warning = None if torch.cuda.is_available() else busy_warning()
    if warning:
        logger.warning("crescent: warning: %s", warning)


def _check_version(cfg: DictConfig, stage: cache.Stage, out: Path, stats: dict) -> None:
    """A done stage made by another stage version is not reused unless the user says so.
    Outputs from before stage versions existed count as version 1."""
    name, made, now = stage.name, stats.get("stage_version", 1), stage.version
    if made == now:
        return
    if not OmegaConf.select(cfg, "accept_stale", default=False):
        raise CrescentError(
            f"{name}: {out} was made by stage version {made}, this code writes version {now}; "
            f"delete it to recompute, or reuse it as it is with accept_stale=true")
    logger.warning("crescent: %s: reusing %s made by stage version %s (now %s): accept_stale=true",
                name, out, made, now)


def _check_key(cfg: DictConfig, stage: cache.Stage, out: Path, stats: dict) -> None:
    """A stage dir kept in the run dir (`cache_dir=null`) made by another config (one that
    differs only in keys the run dir's name leaves out, `answers.input` say) is not reused
    unless the user says so. A cache entry's dir is its key: it always passes."""
    made = stats.get("key")  # dirs from before keys were recorded: taken as they are
    if made is None or made == (now := cache.stage_key(cfg, stage.name)[0]):
        return
    if not OmegaConf.select(cfg, "accept_stale", default=False):
        raise CrescentError(
            f"{stage.name}: {out} holds the output of another config (key {made}, this one "
            f"{now}): run in another dir (hydra.run.dir=...), turn the cache on (cache_dir=...) "
            f"to keep both, or reuse it as it is with accept_stale=true")
    logger.warning("crescent: %s: reusing %s made by another config (key %s, now %s): "
                   "accept_stale=true", stage.name, out, made, now)


def _check_precision(cfg: DictConfig, stage: cache.Stage, out: Path, stats: dict,
                     info: dict) -> None:
    """A done stage that drew (a generating stage: `model.dtype`) or trained (`student.dtype`)
    in another precision than the one this config resolves to here is not reused unless the
    user says so: its key holds the setting, `auto`, not what a machine made of it (bfloat16
    where the CPU has bfloat16 units, float32 elsewhere). The evaluate stage re-scores such
    scores itself (its `outdated`)."""
    made = (stats.get("provenance") or {}).get("precision") or {}
    here = info.get("precision") or {}
    for key in [k for k, applies in (("model.dtype", stage.generates),
                                     ("student.dtype", "student" in stage.keys)) if applies]:
        was, now = (made.get(key) or {}).get("resolved"), (here.get(key) or {}).get("resolved")
        if was is None or now is None or was == now:
            continue
        if not OmegaConf.select(cfg, "accept_stale", default=False):
            raise CrescentError(
                f"{stage.name}: {out} was made in {was} and {key}={made[key]['configured']} is "
                f"{now} here ({here[key]['why']}): delete it to recompute, reuse it as it is "
                f"with accept_stale=true, or set {key} to keep a study in one precision "
                f"across machines")
        logger.warning("crescent: %s: reusing %s made in %s (now %s): accept_stale=true",
                       stage.name, out, was, now)


def _metrics(stats: dict) -> dict:
    """Stats as W&B metrics; provenance goes to the W&B config instead, the key nowhere."""
    return {k: v for k, v in stats.items() if k not in ("provenance", "key")}
