"""Experiment tracking: one W&B run per Hydra job (offline by default), or nothing."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crescent.infra.io import atomic_write_text, read_json


class Tracker:
    """Does nothing; the base for `logger=none`."""

    def log_stats(self, stage: str, stats: dict) -> None:
        pass

    def record_provenance(self, info: dict) -> None:
        pass

    def log_summary(self, run_dir: Path, pipeline: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, cfg: DictConfig, run_dir: Path, group: str, overrides: list[str]):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.run = wandb.init(
            project=cfg.logger.project,
            mode=cfg.logger.mode,
            group=group,
            tags=list(cfg.logger.tags),
            name=run_dir.name,
            id=run_id(run_dir),
            resume="allow",
            dir=str(run_dir),
            # The sweep overrides on their own too, so W&B can group and filter by them.
            config={**OmegaConf.to_container(cfg, resolve=True), "overrides": overrides},
        )

    def log_stats(self, stage: str, stats: dict) -> None:
        flat = _numbers(stats, prefix=f"{stage}/")
        self.run.summary.update(flat)
        self.run.log(flat)

    def record_provenance(self, info: dict) -> None:
        self.run.config.update({"provenance": info}, allow_val_change=True)

    def log_summary(self, run_dir: Path, pipeline: dict) -> None:
        """Final tables: each stage (reused, wall time) and every evaluated score."""
        import wandb

        self.run.log({"summary/stages": wandb.Table(
            columns=["stage", "reused", "wall_time_s"],
            data=[[name, s["reused"], s["wall_time_s"]] for name, s in pipeline.items()])})
        metrics = Path(run_dir) / "evaluate" / "metrics.json"
        if metrics.is_file():
            rows = [[label, task, metric, value]
                    for label, tasks in read_json(metrics).items()
                    for task, values in tasks.items()
                    for metric, value in values.items() if isinstance(value, (int, float))]
            self.run.log({"summary/metrics": wandb.Table(
                columns=["model", "task", "metric", "value"], data=rows)})

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


def run_id(run_dir: Path) -> str:
    """The job's W&B run id, kept in the run dir so that re-running the same command resumes
    the same W&B run instead of starting a second one."""
    id_file = Path(run_dir) / "wandb_id"
    if id_file.exists():
        return id_file.read_text().strip()
    new = secrets.token_hex(4)
    atomic_write_text(id_file, new + "\n")
    return new


def run_group(cfg: DictConfig) -> str:
    """`logger.group`, else one group per multirun (its sweep dir's name), else the study."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.logger.group:
        return cfg.logger.group
    if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
        return Path(HydraConfig.get().sweep.dir).name
    return cfg.name


def make_tracker(cfg: DictConfig, run_dir: Path, overrides: list[str] = ()) -> Tracker:
    from crescent.infra.logs import rank

    # One W&B run per job: a fine-tune's other ranks log through Lightning's rank-zero logger.
    if cfg.logger.name == "wandb" and rank() == 0:
        return WandbTracker(cfg, run_dir, run_group(cfg), list(overrides))
    return Tracker()
