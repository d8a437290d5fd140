"""Crash-safe I/O on real files: torn lines are repaired, bad lines are named by file:line."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

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


def test_a_full_disk_names_the_file():
    # /dev/full answers every write with ENOSPC, as a full disk does at flush or close.
    with pytest.raises(OSError) as e, JsonlAppender(Path("/dev/full")) as log:
        log.write({"id": 0})
    assert e.value.filename == "/dev/full" and e.value.errno == errno.ENOSPC


def test_atomic_files_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    from crescent.infra.io import FILE_MODE

    atomic_write_text(tmp_path / "stats.json", "{}\n")
    assert stat.S_IMODE((tmp_path / "stats.json").stat().st_mode) == FILE_MODE
    assert FILE_MODE & 0o044 == 0o044 & ~_umask()  # group/other read it where the umask lets them


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_serve_listens_on_localhost_unless_told():
    from crescent.infra.serve import serve_args

    assert serve_args(["/m", "--port", "8000"], cpu=False)[-2:] == ["--host", "127.0.0.1"]
    assert serve_args(["/m", "--host", "0.0.0.0"], cpu=False) == ["/m", "--host", "0.0.0.0"]
    assert "--no-enable-chunked-prefill" in serve_args(["/m"], cpu=True)
