"""W&B tracking, offline: one run per job, stats logged, the same run resumed on a re-run,
final summary tables."""

from __future__ import annotations

from omegaconf import OmegaConf

from crescent.config import Config
from crescent.infra.io import write_json
from crescent.infra.tracking import Tracker, make_tracker


def _cfg(logger: str, group: str = "sweep"):
    cfg = OmegaConf.structured(Config)
    cfg.logger.name = logger
    cfg.logger.mode = "offline"
    cfg.logger.group = group
    return cfg


def test_none_logger_tracks_nothing(tmp_path):
    tracker = make_tracker(_cfg("none"), tmp_path)
    assert type(tracker) is Tracker
    assert list(tmp_path.iterdir()) == []


def test_wandb_offline_run_is_resumed_by_id(tmp_path):
    first = make_tracker(_cfg("wandb"), tmp_path, ["finetune.lr=1e-4"])
    first.log_stats("questions", {"accepted": 5, "rejected": {"duplicate": 2}, "stop_reason": "x"})
    assert first.run.summary["questions/accepted"] == 5
    assert first.run.summary["questions/rejected/duplicate"] == 2
    assert first.run.group == "sweep"
    assert first.run.config["overrides"] == ["finetune.lr=1e-4"]
    run_id = first.run.id
    first.finish()
    assert (tmp_path / "wandb_id").read_text().strip() == run_id
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))

    second = make_tracker(_cfg("wandb"), tmp_path)
    assert second.run.id == run_id
    second.finish()


def test_summary_tables_hold_every_stage_and_score(tmp_path):
    write_json(tmp_path / "evaluate" / "metrics.json", {
        "base": {"crescent_gsm8k": {"exact_match": 0.25, "alias": "x"}},
        "finetuned": {"crescent_gsm8k": {"exact_match": 0.5}}})
    tracker = make_tracker(_cfg("wandb"), tmp_path)
    tracker.log_summary(tmp_path, {"questions": {"reused": True, "wall_time_s": 1.5},
                                   "evaluate": {"reused": False, "wall_time_s": 9.0}})
    stages, metrics = (tracker.run.summary[f"summary/{k}"] for k in ("stages", "metrics"))
    assert stages["_type"] == metrics["_type"] == "table-file"
    assert stages["nrows"] == 2 and metrics["nrows"] == 2  # the text field is not a score
    tracker.finish()
