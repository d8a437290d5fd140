"""Crash-safe I/O on real files: torn lines are repaired, bad lines are named by file:line."""

from __future__ import annotations

import json

import pytest

from crescent.errors import CrescentError
from crescent.infra.io import (
    JsonlAppender,
    atomic_write_text,
    read_jsonl,
    resume_jsonl,
)


def test_appender_drops_a_torn_last_line_and_keeps_the_rest(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": 0}\n{"id": 1}\n{"id": 2, "quest')  # as a kill mid-write leaves it
    with JsonlAppender(path) as out:
        out.write({"id": 2})
    assert [r["id"] for r in read_jsonl(path)] == [0, 1, 2]


def test_resume_reads_what_a_kill_left_and_drops_the_torn_line(tmp_path):
    path = tmp_path / "q.jsonl"
    assert resume_jsonl(path) == [] and not path.exists()
    path.write_text('{"id": 0}\n{"id": 1, "quest')
    assert resume_jsonl(path) == [{"id": 0}]
    assert path.read_text() == '{"id": 0}\n'
    path.write_text('{"id": 0}\nnot json\n')  # a whole bad line is still an error
    with pytest.raises(CrescentError, match=r"q\.jsonl:2:"):
        resume_jsonl(path)


def test_appender_flushes_each_record(tmp_path):
    path = tmp_path / "q.jsonl"
    out = JsonlAppender(path)
    out.write({"id": 0, "question": "What is 3/4 of $12?"})
    # Readable before close: a kill right now loses nothing that was written.
    assert json.loads(path.read_text()) == {"id": 0, "question": "What is 3/4 of $12?"}
    out.close()


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 0}\n\nnot json\n')
    with pytest.raises(CrescentError, match=r"bad\.jsonl:3:"):
        list(read_jsonl(path))


def test_read_jsonl_rejects_non_objects(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(CrescentError, match=r"list\.jsonl:1: expected a JSON object"):
        list(read_jsonl(path))


def test_atomic_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "stats.json"
    atomic_write_text(target, "{}\n")
    atomic_write_text(target, '{"a": 1}\n')
    assert target.read_text() == '{"a": 1}\n'
    assert [p.name for p in target.parent.iterdir()] == ["stats.json"]
