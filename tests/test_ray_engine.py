"""engine=ray_vllm on a local Ray instance: two vLLM replicas (one core each) run the questions
stage unchanged and write the very bytes one offline engine writes with the same seed (slow)."""

from __future__ import annotations

import pytest

from crescent.infra.io import read_json

COMMON = ["stages=[questions]", "questions.target=8", "questions.batch_size=12",
          "questions.max_candidates=48", "questions.sampling.max_tokens=64", "cache_dir=null",
          "logger=none"]


@pytest.mark.slow
@pytest.mark.long
def test_two_ray_replicas_write_what_one_engine_writes(cli, tmp_path):
    ray = cli(*COMMON, "engine=ray_vllm", "engine.data_parallel_size=2", "hydra.run.dir=ray",
              timeout=1200)
    assert ray.returncode == 0, ray.stderr[-3000:]
    one = cli(*COMMON, "engine=vllm", "hydra.run.dir=one", timeout=1200)
    assert one.returncode == 0, one.stderr[-3000:]
    questions = [(tmp_path / run / "questions" / "questions.jsonl").read_bytes()
                 for run in ("ray", "one")]
    assert questions[0] == questions[1]
    assert read_json(tmp_path / "ray" / "questions" / "stats.json")["accepted"] == 8
