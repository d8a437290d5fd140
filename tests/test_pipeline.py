"""The runner: stage order, DONE last, skip when done, resume from partial output, clear errors."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from crescent import pipeline
from crescent.io import CrescentError, read_json, read_jsonl
from crescent.tracking import Tracker


class RecordingTracker(Tracker):
    def __init__(self):
        self.logged = []

    def log_stats(self, stage, stats):
        self.logged.append((stage, stats))


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setitem(pipeline.STAGES, "counting", "tests.counting_stage")
    return OmegaConf.create({"stages": ["counting"]})


def test_stage_writes_stats_then_done(counting, tmp_path):
    tracker = RecordingTracker()
    pipeline.run_pipeline(counting, tmp_path, tracker)
    out = tmp_path / "counting"
    assert (out / "DONE").is_file()
    stats = read_json(out / "stats.json")
    assert stats["items"] == 10 and stats["wall_time_s"] >= 0
    assert tracker.logged == [("counting", stats)]


def test_crash_leaves_no_done_and_rerun_resumes_without_duplicates(
    counting, tmp_path, monkeypatch
):
    monkeypatch.setenv("COUNTING_CRASH_AT", "6")
    with pytest.raises(RuntimeError, match="crash at 6"):
        pipeline.run_pipeline(counting, tmp_path, Tracker())
    assert not (tmp_path / "counting" / "DONE").exists()
    assert not (tmp_path / "counting" / "stats.json").exists()

    monkeypatch.delenv("COUNTING_CRASH_AT")
    pipeline.run_pipeline(counting, tmp_path, Tracker())
    ids = [r["id"] for r in read_jsonl(tmp_path / "counting" / "items.jsonl")]
    assert ids == list(range(10))
    assert read_json(tmp_path / "counting" / "stats.json")["resumed_from"] == 6


def test_done_stage_is_skipped(counting, tmp_path, monkeypatch):
    pipeline.run_pipeline(counting, tmp_path, Tracker())
    items = tmp_path / "counting" / "items.jsonl"
    items.write_text("")  # would be refilled if the stage ran again
    monkeypatch.setenv("COUNTING_CRASH_AT", "0")  # and would crash
    tracker = RecordingTracker()
    pipeline.run_pipeline(counting, tmp_path, tracker)
    assert items.read_text() == "" and tracker.logged == []


def test_unknown_stage_fails_before_any_stage_runs(counting, tmp_path):
    cfg = OmegaConf.create({"stages": ["counting", "questoins"]})
    with pytest.raises(CrescentError, match="unknown stage 'questoins'"):
        pipeline.run_pipeline(cfg, tmp_path, Tracker())
    assert not (tmp_path / "counting").exists()


def test_unimplemented_stage_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(pipeline.STAGES, "later", "crescent.not_written_yet")
    with pytest.raises(CrescentError, match="stage 'later' is not implemented yet"):
        pipeline.run_pipeline(OmegaConf.create({"stages": ["later"]}), tmp_path, Tracker())


def test_cli_error_is_one_line_and_nonzero(cli):
    result = cli("stages=[questoins]", "logger=none")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "crescent: error: stages: unknown stage 'questoins' "
        "(known: questions, answers, finetune, evaluate)"
    )
