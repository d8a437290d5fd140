"""W&B tracking, offline: one run per job, stats logged, the same run resumed on a re-run."""

from __future__ import annotations

from omegaconf import OmegaConf

from crescent.config import Config
from crescent.tracking import Tracker, make_tracker


def _cfg(logger: str):
    cfg = OmegaConf.structured(Config)
    cfg.logger.name = logger
    cfg.logger.mode = "offline"
    return cfg


def test_none_logger_tracks_nothing(tmp_path):
    tracker = make_tracker(_cfg("none"), tmp_path, group="g")
    assert type(tracker) is Tracker
    assert list(tmp_path.iterdir()) == []


def test_wandb_offline_run_is_resumed_by_id(tmp_path):
    first = make_tracker(_cfg("wandb"), tmp_path, group="sweep")
    first.log_stats("questions", {"accepted": 5, "rejected": {"duplicate": 2}, "stop_reason": "x"})
    assert first.run.summary["questions/accepted"] == 5
    assert first.run.summary["questions/rejected/duplicate"] == 2
    assert first.run.group == "sweep"
    run_id = first.run.id
    first.finish()
    assert (tmp_path / "wandb_id").read_text().strip() == run_id
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))

    second = make_tracker(_cfg("wandb"), tmp_path, group="sweep")
    assert second.run.id == run_id
    second.finish()
