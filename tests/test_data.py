"""Benchmark data: where a run finds it, `crescent-data fetch` and its pins, the missing-data line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from crescent.__main__ import CONF_DIR
from crescent.errors import CrescentError
from crescent.infra import data
from tests.conftest import DATA, ROOT

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="no reference benchmark data here")


def test_resolution_order_is_config_then_env_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRESCENT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CRESCENT_DATA", raising=False)
    assert data.data_dir(None) == tmp_path / "cache" / "data"
    monkeypatch.setenv("CRESCENT_DATA", str(tmp_path / "env"))
    assert data.data_dir(None) == tmp_path / "env"
    assert data.data_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"


def test_missing_file_names_the_command_that_fixes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CRESCENT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CRESCENT_DATA", raising=False)
    with pytest.raises(CrescentError, match=r"cache/data/gsm8k/test.jsonl not found.*"
                                            r"run `crescent-data fetch`") as info:
        data.require(None, "gsm8k/test.jsonl")
    assert "\n" not in str(info.value)


@needs_data
def test_fetch_from_a_local_copy_checks_every_pin(tmp_path):
    lines = data.fetch(tmp_path / "dest", DATA)
    assert [line.split(":")[0] for line in lines] == list(data.PINS)
    assert all(status == "ok" for _, status in data.check(tmp_path / "dest"))
    assert data.fetch(tmp_path / "dest", DATA)[0].endswith("(already there)")
    # A copy that differs from the pinned version is refused and nothing is written.
    other = tmp_path / "other"
    data.fetch(other, DATA)
    (other / "math500/test.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(CrescentError, match=r"math500/test.jsonl: sha256 \w+ is not the pinned"):
        data.fetch(tmp_path / "fresh", other)
    assert not (tmp_path / "fresh" / "math500" / "test.jsonl").exists()


def test_hub_fetch_fails_in_one_line_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CrescentError, match=r"hub cannot be reached .*`crescent-data fetch --from"):
        data.fetch(tmp_path / "dest")
    assert not list((tmp_path / "dest").rglob("*.jsonl"))


def test_unset_data_dir_still_fills_config_interpolations(tmp_path, monkeypatch):
    monkeypatch.setenv("CRESCENT_DATA", str(tmp_path / "bench"))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=baseline_seed_aug"])
    assert cfg.eval.data_dir is None
    data.fill_data_dir(cfg)
    assert cfg.questions.seeds == f"{tmp_path / 'bench'}/gsm8k/train.jsonl"


def test_run_without_data_stops_before_any_stage_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CRESCENT_DATA"}
    env.update(CRESCENT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    result = subprocess.run([sys.executable, "-m", "crescent", "logger=none", "engine=hf"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [(
        f"crescent: error: answers.decontaminate: benchmark data {tmp_path}/cache/data/gsm8k/"
        f"test.jsonl not found (looked in eval.data_dir, else $CRESCENT_DATA, else "
        f"{tmp_path}/cache/data): run `crescent-data fetch` (Hugging Face hub) or "
        f"`crescent-data fetch --from DIR` (a local copy), or set CRESCENT_DATA=DIR")]
    assert not list(tmp_path.rglob("DONE"))


def test_a_benchmark_file_that_is_not_the_pinned_one_is_said(tmp_path, caplog):
    for rel in data.PINS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((DATA / rel).read_bytes())
    data.warn_unpinned(tmp_path)
    assert not caplog.records  # the pinned files: nothing to say
    (tmp_path / "gsm8k/test.jsonl").write_text('{"question": "edited", "answer": "#### 1"}\n')
    data.warn_unpinned(tmp_path / "gsm8k" / "..")  # another path to the same dir: checked anew
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "gsm8k/test.jsonl is not the pinned gsm8k/test.jsonl" in warning
