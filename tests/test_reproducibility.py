"""Same config and seed on the hf engine: byte-identical questions.jsonl and qa.jsonl; another
seed: different questions (slow). Stats record the seed and the model's fingerprint."""

from __future__ import annotations

import pytest

from crescent.infra.io import read_json
from tests.conftest import DATA

SMALL = ["engine=hf", "questions.target=5", "questions.max_candidates=24", "questions.batch_size=8",
         "questions.sampling.max_tokens=80", "voting.k=2", "voting.min_votes=1",
         "answers.sampling.max_tokens=128", f"eval.data_dir={DATA}", "logger=none",
         "cache_dir=null"]


@pytest.mark.slow
@pytest.mark.long
def test_same_seed_same_bytes_on_hf(cli, tmp_path):
    for run, seed, stages in (("a", 0, "questions,answers"), ("b", 0, "questions,answers"),
                              ("c", 1, "questions")):
        result = cli(*SMALL, f"stages=[{stages}]", f"seed={seed}", f"hydra.run.dir={run}",
                     timeout=1200)
        assert result.returncode == 0, result.stderr[-3000:]

    def data(run, stage, name):
        return (tmp_path / run / stage / name).read_bytes()

    for stage, name in (("questions", "questions.jsonl"), ("answers", "qa.jsonl"),
                        ("answers", "samples.jsonl")):
        assert data("a", stage, name) == data("b", stage, name), f"{stage}/{name} differs"
    assert data("a", "questions", "questions.jsonl") != data("c", "questions", "questions.jsonl")
    stats = read_json(tmp_path / "a" / "answers" / "stats.json")
    assert stats["provenance"]["seed"] == 0
    model = stats["provenance"]["model"]
    assert len(model["chat_template_sha256"]) == 64 and model["weights"]
    assert stats["provenance"]["packages"]["torch"].startswith("2.13.0")
