"""Experiment tracking: one W&B run per Hydra job (offline by default), or nothing."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crescent.io import atomic_write_text


class Tracker:
    """Does nothing; the base for `logger=none`."""

    def log_stats(self, stage: str, stats: dict) -> None:
        pass

    def record_provenance(self, info: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, cfg: DictConfig, run_dir: Path, group: str):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        # The id is kept in the run dir so that re-running the same command resumes the
        # same W&B run instead of starting a second one.
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        atomic_write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            project=cfg.logger.project,
            mode=cfg.logger.mode,
            group=cfg.logger.group or group,
            tags=list(cfg.logger.tags),
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=OmegaConf.to_container(cfg, resolve=True),
        )

    def log_stats(self, stage: str, stats: dict) -> None:
        flat = _numbers(stats, prefix=f"{stage}/")
        self.run.summary.update(flat)
        self.run.log(flat)

    def record_provenance(self, info: dict) -> None:
        self.run.config.update({"provenance": info}, allow_val_change=True)

    def finish(self) -> None:
        self.run.finish()


def _numbers(obj: Any, prefix: str) -> dict[str, float]:
    """Flatten nested stats to `stage/key/sub` -> number, the shape W&B charts want."""
    out: dict[str, float] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def make_tracker(cfg: DictConfig, run_dir: Path, group: str) -> Tracker:
    if cfg.logger.name == "wandb":
        return WandbTracker(cfg, run_dir, group)
    return Tracker()
