"""The runner: stage order, DONE last, skip when done, resume from partial output, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from crescent import cache, pipeline
from crescent.errors import CrescentError
from crescent.infra.io import read_json, read_jsonl
from crescent.infra.tracking import Tracker
from tests.conftest import ROOT


class RecordingTracker(Tracker):
    def __init__(self):
        self.logged = []

    def log_stats(self, stage, stats):
        self.logged.append((stage, stats))


@pytest.fixture
def counting():
    import tests.counting_stage  # noqa: F401  (registers the stage)

    return OmegaConf.create({"stages": ["counting"]})


def _bump(monkeypatch, version: int) -> None:
    """The code changes what `counting` writes and bumps its version."""
    from dataclasses import replace

    from tests import counting_stage

    monkeypatch.setattr(counting_stage, "STAGE", replace(counting_stage.STAGE, version=version))


def test_stage_writes_stats_then_done(counting, tmp_path):
    tracker = RecordingTracker()
    pipeline.run_pipeline(counting, tmp_path, tracker)
    out = tmp_path / "counting"
    assert (out / "DONE").is_file()
    stats = read_json(out / "stats.json")
    assert stats["items"] == 10 and stats["wall_time_s"] >= 0
    assert stats["provenance"] == {}  # this config names no model
    assert stats["stage_version"] == 1
    assert tracker.logged == [("counting", {"items": 10, "resumed_from": 0, "stage_version": 1,
                                            "wall_time_s": stats["wall_time_s"], "reused": 0})]


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
    written = items.read_bytes()
    monkeypatch.setenv("COUNTING_CRASH_AT", "0")  # the stage would crash if it ran again
    tracker = RecordingTracker()
    pipeline.run_pipeline(counting, tmp_path, tracker)
    assert items.read_bytes() == written
    assert [(stage, stats["reused"]) for stage, stats in tracker.logged] == [("counting", 1)]


def test_unknown_stage_fails_before_any_stage_runs(counting, tmp_path):
    cfg = OmegaConf.create({"stages": ["counting", "questoins"]})
    with pytest.raises(CrescentError, match="unknown stage 'questoins'"):
        pipeline.run_pipeline(cfg, tmp_path, Tracker())
    assert not (tmp_path / "counting").exists()


def test_cli_error_is_one_line_and_nonzero(cli):
    result = cli("stages=[questoins]", "logger=none")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "crescent: error: stages: unknown stage 'questoins' "
        "(known: questions, answers, audit, finetune, evaluate)"
    )


@pytest.fixture
def two_stages():
    import tests.counting_stage
    import tests.summing_stage  # noqa: F401


def _run(tmp_path, run, **cfg):
    cfg = OmegaConf.create({"stages": ["counting", "summing"], "n": 10, "factor": 1,
                            "cache_dir": str(tmp_path / "cache"), **cfg})
    pipeline.run_pipeline(cfg, tmp_path / run, Tracker())
    return read_json(tmp_path / run / "pipeline.json")


def test_cache_shares_upstream_outputs_between_configs(two_stages, tmp_path):
    first = _run(tmp_path, "a")
    assert not first["counting"]["reused"] and not first["summing"]["reused"]

    second = _run(tmp_path, "b", factor=2)  # a downstream-only change
    assert second["counting"]["reused"] and not second["summing"]["reused"]
    assert second["counting"]["cache"] == first["counting"]["cache"]
    assert (tmp_path / "b" / "counting").resolve() == (tmp_path / "a" / "counting").resolve()
    assert read_json(tmp_path / "b" / "summing" / "stats.json")["sum"] == 2 * 45

    third = _run(tmp_path, "c", n=5, factor=2)  # an upstream change re-keys both stages
    assert not third["counting"]["reused"] and not third["summing"]["reused"]
    assert read_json(tmp_path / "c" / "summing" / "stats.json")["sum"] == 2 * 10
    assert read_json(tmp_path / "a" / "summing" / "stats.json")["sum"] == 45  # untouched


_ONE_JOB = """
import sys
from pathlib import Path
from pathlib import Path
from omegaconf import OmegaConf
from crescent import cache, pipeline
from crescent.infra import logs
from crescent.infra.tracking import Tracker
logs.setup()
import tests.counting_stage  # registers the stage
cfg = OmegaConf.create({"stages": ["counting"], "n": 20, "cache_dir": sys.argv[2]})
pipeline.run_pipeline(cfg, Path(sys.argv[1]), Tracker())
"""


def test_two_processes_on_one_cache_entry_write_it_once(tmp_path):
    # Two sweep points that share an upstream stage start together: one runs it, the other
    # waits on the entry's lock and then reuses it; the entry holds every id exactly once.
    env = dict(os.environ, PYTHONPATH=str(ROOT), COUNTING_DELAY_S="0.15")
    jobs = [subprocess.Popen([sys.executable, "-c", _ONE_JOB, str(tmp_path / run),
                              str(tmp_path / "cache")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for run in ("a", "b")]
    outputs = [job.communicate(timeout=120) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    reused = sorted(read_json(tmp_path / run / "pipeline.json")["counting"]["reused"]
                    for run in ("a", "b"))
    assert reused == [False, True]
    assert sum("another job is running it" in out for out, _ in outputs) == 1
    entries = list((tmp_path / "cache" / "counting").iterdir())
    entry = next(e for e in entries if e.is_dir())
    assert [r["id"] for r in read_jsonl(entry / "items.jsonl")] == list(range(20))
    assert (tmp_path / "a" / "counting").resolve() == (tmp_path / "b" / "counting").resolve()


def test_downstream_stage_alone_finds_cached_upstream(two_stages, tmp_path):
    _run(tmp_path, "a")
    alone = _run(tmp_path, "d", stages=["summing"], factor=3)
    assert list(alone) == ["summing"] and not alone["summing"]["reused"]
    assert (tmp_path / "d" / "counting").is_symlink()
    assert read_json(tmp_path / "d" / "summing" / "stats.json")["sum"] == 3 * 45


def test_explicit_input_is_keyed_by_content(tmp_path):
    from crescent.config import Config

    cfg = OmegaConf.structured(Config)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_text('{"question": "q"}\n')
    two.write_text('{"question": "q"}\n')
    keys = []
    for path in (one, two):
        cfg.answers.input = str(path)
        keys.append(cache.stage_key(cfg, "answers")[0])
    assert keys[0] == keys[1]  # same content elsewhere: same key
    two.write_text('{"question": "another q"}\n')
    assert cache.stage_key(cfg, "answers")[0] != keys[0]
    cfg.answers.input = str(tmp_path / "missing.jsonl")
    with pytest.raises(CrescentError, match="answers.input: .*missing.jsonl does not exist"):
        cache.stage_key(cfg, "answers")


def test_provenance_names_versions_model_files_and_template(tmp_path):
    from crescent.config import Config
    from crescent.infra.provenance import provenance

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"0" * 123)
    (model / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    cfg = OmegaConf.structured(Config)
    cfg.model.name = cfg.student.name = str(model)
    cfg.seed = 7
    info = provenance(cfg)
    assert info["seed"] == 7 and info["packages"]["torch"].startswith("2.13.0")
    assert info["model"]["weights"] == {"model.safetensors": 123}
    assert len(info["model"]["chat_template_sha256"]) == 64 and "student" not in info
    (model / "tokenizer_config.json").write_text('{"chat_template": "{{ other }}"}')
    assert provenance(cfg)["model"]["chat_template_sha256"] != info["model"]["chat_template_sha256"]


def test_changed_stage_version_is_not_reused_from_the_cache(two_stages, tmp_path, monkeypatch):
    first = _run(tmp_path, "a")
    old_entry = first["counting"]["cache"]
    _bump(monkeypatch, 2)  # the config does not change
    again = _run(tmp_path, "a")
    assert not again["counting"]["reused"] and not again["summing"]["reused"]
    assert again["counting"]["cache"] != old_entry
    assert read_json(os.path.join(again["counting"]["cache"], "cache_key.json"))["version"] == 2
    assert read_json(tmp_path / "a" / "counting" / "stats.json")["stage_version"] == 2
    assert read_json(os.path.join(old_entry, "stats.json"))["stage_version"] == 1  # kept as it was


def test_run_dir_stage_of_another_version_is_refused_unless_accepted(counting, tmp_path,
                                                                     monkeypatch):
    pipeline.run_pipeline(counting, tmp_path, Tracker())  # no cache_dir: the stage lives here
    _bump(monkeypatch, 3)
    with pytest.raises(CrescentError, match=r"counting: .* made by stage version 1, this code "
                                            r"writes version 3; .*accept_stale=true"):
        pipeline.run_pipeline(counting, tmp_path, Tracker())
    tracker = RecordingTracker()
    pipeline.run_pipeline(OmegaConf.merge(counting, {"accept_stale": True}), tmp_path, tracker)
    assert [(stage, stats["reused"]) for stage, stats in tracker.logged] == [("counting", 1)]


def _data_copy(root, extra=""):
    for rel in ("gsm8k/test.jsonl", "math500/test.jsonl"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text('{"question": "What is 2 + 2?", "answer": "4"}\n' + extra)
    return root


def test_benchmark_data_enters_keys_by_content_not_path(tmp_path, monkeypatch):
    from crescent.config import Config

    cfg = OmegaConf.structured(Config)
    keys = {}
    for name in ("here", "there"):
        cfg.eval.data_dir = str(_data_copy(tmp_path / name))
        keys[name] = (cache.stage_key(cfg, "answers"), cache.stage_key(cfg, "evaluate")[0])
    assert keys["here"] == keys["there"]  # same files elsewhere: same keys
    assert str(tmp_path) not in json.dumps(keys["here"][0][1])  # no machine path in the key
    _data_copy(tmp_path / "there", extra='{"question": "new", "answer": "1"}\n')
    assert cache.stage_key(cfg, "answers")[0] != keys["here"][0][0]
    # eval.data_dir unset: $CRESCENT_DATA gives the same key as the same files named directly
    cfg.eval.data_dir = None
    monkeypatch.setenv("CRESCENT_DATA", str(tmp_path / "here"))
    assert cache.stage_key(cfg, "answers")[0] == keys["here"][0][0]


@pytest.mark.parametrize("damage, problem", [
    (lambda items: items.unlink(), "items.jsonl is missing"),
    (lambda items: items.write_text(items.read_text().replace('{"id": 3}\n', "")),
     "items.jsonl holds 90 bytes, 100 when it was written"),
    (lambda items: items.write_text(items.read_text().replace("3", "7")),
     "items.jsonl changed since it was written"),
    # a DONE that does not parse vouches for nothing (it used to skip the check)
    (lambda items: (items.parent / "DONE").write_text("2026-12-06T00:00:00\n"),
     "its DONE marker does not parse as the file list Crescent writes"),
])
def test_a_damaged_entry_is_found_before_reuse(two_stages, tmp_path, damage, problem):
    first = _run(tmp_path, "a")
    damage(tmp_path / "a" / "counting" / "items.jsonl")
    entry = first["counting"]["cache"]
    for stages in (["counting", "summing"], ["summing"]):  # the stage itself, or as upstream
        with pytest.raises(CrescentError) as e:
            _run(tmp_path, "b", stages=stages, factor=2)
        assert str(e.value) == (f"counting: {entry} is damaged: {problem}; to rebuild it, "
                                f"delete it (rm -r {entry}) and run the same command again")
    assert not (tmp_path / "b" / "summing" / "stats.json").exists()


def test_keys_added_later_leave_older_entries_valid_at_their_default():
    # voting.rule and finetune.objective came after entries were made: at their defaults the
    # answers and finetune keys are what they were without them; another value re-keys.
    from crescent.config import Config

    cfg = OmegaConf.structured(Config)
    cfg.questions.target = 7
    keys = {name: cache.stage_key(cfg, name) for name in ("answers", "finetune")}
    assert "rule" not in keys["answers"][1]["voting"]
    assert "objective" not in keys["finetune"][1]["finetune"]
    cfg.voting.rule, cfg.finetune.objective = "unanimous", "dpo"
    assert cache.stage_key(cfg, "answers")[0] != keys["answers"][0]
    assert cache.stage_key(cfg, "finetune")[1]["finetune"]["objective"] == "dpo"


def test_files_of_any_size_are_verified_by_content(tmp_path):
    # Weights over 64 MiB were checked by size alone: 4 KiB overwritten went unseen.
    entry = tmp_path / "entry"
    entry.mkdir()
    weights = entry / "model.safetensors"
    weights.write_bytes(bytes(65 << 20))
    cache.mark_done(entry)
    assert cache.damage(entry) is None
    with open(weights, "r+b") as f:
        f.seek(32 << 20)
        f.write(b"\xff" * 4096)
    assert cache.damage(entry) == "model.safetensors changed since it was written"


def test_every_reader_reads_through_the_entrys_check(two_stages, tmp_path):
    # A stage reading another's file through a link (the audit reading the samples through
    # a finished answers dir) is stopped when the entry behind the link lost a line.
    first = _run(tmp_path, "a")
    cfg = OmegaConf.create({"stages": ["summing"], "n": 10, "factor": 1,
                            "cache_dir": str(tmp_path / "cache")})
    read = cache.input_path(cfg, tmp_path / "a", "summing", "items.jsonl")
    assert read.resolve().parent == Path(first["counting"]["cache"])
    items = Path(first["counting"]["cache"]) / "items.jsonl"
    items.write_text(items.read_text().replace('{"id": 3}\n', ""))
    with pytest.raises(CrescentError, match=r"^summing: .* is damaged: items.jsonl holds 90 "
                                            r"bytes, 100 when it was written"):
        cache.input_path(cfg, tmp_path / "a", "summing", "items.jsonl")


def test_a_local_benchmarks_data_enters_the_evaluate_key_by_content(tmp_path):
    # A task in eval.include_path reading a file of its own under the data dir: editing that
    # file re-keys the scores (only the three pinned files counted before); runs on the pinned
    # files alone keep their keys.
    from crescent.config import Config

    data = _data_copy(tmp_path / "data")
    (data / "mine").mkdir()
    (data / "mine" / "test.jsonl").write_text('{"question": "1 + 1?", "answer": "2"}\n')
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text(
        'task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n'
        '    test: "${CRESCENT_DATA}/mine/test.jsonl"\noutput_type: generate_until\n')
    cfg = OmegaConf.structured(Config)
    cfg.eval.data_dir = str(data)
    pinned_only = cache.stage_key(cfg, "evaluate_base")
    assert "local_data" not in pinned_only[1]["eval"]
    cfg.eval.include_path, cfg.eval.tasks = [str(tmp_path / "tasks")], ["mine"]
    before = cache.stage_key(cfg, "evaluate_base")
    assert list(before[1]["eval"]["local_data"]) == ["mine/test.jsonl"]
    (data / "mine" / "test.jsonl").write_text('{"question": "1 + 2?", "answer": "3"}\n')
    assert cache.stage_key(cfg, "evaluate_base")[0] != before[0]


def test_a_run_dir_stage_made_by_another_config_is_refused_unless_accepted(counting, tmp_path):
    # With the cache off, a config that differs only in a key the run dir's name leaves out
    # (answers.input, say) lands in the same dir: it used to be skipped as done.
    pipeline.run_pipeline(OmegaConf.merge(counting, {"n": 10}), tmp_path, Tracker())
    pipeline.run_pipeline(OmegaConf.merge(counting, {"n": 10}), tmp_path, Tracker())  # same: fine
    other = OmegaConf.merge(counting, {"n": 11})
    with pytest.raises(CrescentError, match=r"^counting: .* holds the output of another config "
                                            r"\(key \w+, this one \w+\): run in another dir"):
        pipeline.run_pipeline(other, tmp_path, Tracker())
    tracker = RecordingTracker()
    pipeline.run_pipeline(OmegaConf.merge(other, {"accept_stale": True}), tmp_path, tracker)
    assert [(stage, stats["reused"]) for stage, stats in tracker.logged] == [("counting", 1)]


def _made_in(resolved: str, why: str) -> dict:
    """A stage's recorded precision (crescent/infra/provenance.py) under dtype auto."""
    made = {"configured": "auto", "resolved": resolved, "why": why}
    return {"precision": {"model.dtype": made, "student.dtype": made}}


def test_a_stage_made_in_another_precision_under_auto_is_refused_unless_accepted(tmp_path):
    # `auto` is bfloat16 on a CPU with bfloat16 units and float32 elsewhere: the key holds
    # `auto`, so an entry drawn on one machine would pass for the other's.
    elsewhere = {"provenance": _made_in("bfloat16", "CPU has avx512_bf16")}
    here = _made_in("float32", "CPU has none of amx_bf16, avx512_bf16")
    cfg = OmegaConf.create({"accept_stale": False})
    for name, key in (("questions", "model.dtype"), ("finetune", "student.dtype")):
        with pytest.raises(CrescentError, match=rf"^{name}: .* was made in bfloat16 and "
                                                rf"{key}=auto is float32 here \(CPU has none "
                                                r".*\): delete it to recompute, .*accept_stale"):
            pipeline._check_precision(cfg, cache.spec(name), tmp_path, elsewhere, here)
        pipeline._check_precision(cfg, cache.spec(name), tmp_path, {"provenance": here}, here)
        pipeline._check_precision(OmegaConf.create({"accept_stale": True}), cache.spec(name),
                                  tmp_path, elsewhere, here)
    # The evaluate stage re-scores such scores itself; a stage from before provenance passes.
    pipeline._check_precision(cfg, cache.spec("evaluate"), tmp_path, elsewhere, here)
    pipeline._check_precision(cfg, cache.spec("questions"), tmp_path, {}, here)
