"""Pipeline runner: runs `cfg.stages` in order, each in `<run dir>/<stage>/`, skipping finished ones.

A stage is a module with `run(cfg, run_dir) -> Path` that writes its artefacts and
`stats.json` into its stage dir and resumes from whatever partial output it finds there.
The runner writes the `DONE` marker, atomically and last, once the stage has returned.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig

from crescent.io import CrescentError, atomic_write_text, read_json, write_json
from crescent.tracking import Tracker

# The one stage table: stage name -> module holding its `run`.
STAGES = {
    "questions": "crescent.questions",
    "answers": "crescent.answers",
    "finetune": "crescent.finetune",
    "evaluate": "crescent.evaluate",
}
DONE = "DONE"
STATS = "stats.json"


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage


def is_done(run_dir: Path, stage: str) -> bool:
    return (stage_dir(run_dir, stage) / DONE).exists()


def load_stage(name: str) -> ModuleType:
    if name not in STAGES:
        raise CrescentError(f"stages: unknown stage {name!r} (known: {', '.join(STAGES)})")
    try:
        return importlib.import_module(STAGES[name])
    except ModuleNotFoundError as e:
        if e.name != STAGES[name]:  # a missing dependency inside the stage: not ours to hide
            raise
        raise CrescentError(f"stage {name!r} is not implemented yet") from None


def run_pipeline(cfg: DictConfig, run_dir: Path, tracker: Tracker) -> None:
    # Resolve every stage before running any, so a typo fails now and not after hours.
    modules = {name: load_stage(name) for name in cfg.stages}
    for name, module in modules.items():
        out = stage_dir(run_dir, name)
        if is_done(run_dir, name):
            print(f"crescent: {name}: already done in {out}, skipped", flush=True)
            continue
        out.mkdir(parents=True, exist_ok=True)
        print(f"crescent: {name}: running in {out}", flush=True)
        started = time.time()
        module.run(cfg, run_dir)
        stats_path = out / STATS
        if not stats_path.is_file():
            raise CrescentError(f"stage {name!r} finished without writing {stats_path}")
        stats = read_json(stats_path)
        stats.setdefault("wall_time_s", round(time.time() - started, 2))
        write_json(stats_path, stats)
        tracker.log_stats(name, stats)
        atomic_write_text(out / DONE, time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
        print(f"crescent: {name}: done in {stats['wall_time_s']:.1f} s", flush=True)
