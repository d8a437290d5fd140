"""Trust on the embedded model (slow): a cache entry damaged after it was finished is found on
re-run, in one line with the command that rebuilds it (the finetune model, a samples line, the
answers' sft.jsonl and stats.json); an oversized input question is dropped as too_long while the
rest is answered; files keep the umask's mode; Ctrl-C ends a stage with exit 130 and one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crescent.infra.io import FILE_MODE, read_json, read_jsonl
from tests.conftest import DATA, ROOT, run_cli
from tests.killing import lines

QUESTIONS = [{"id": "a", "question": "Tom has 3 apples and buys 5 more. How many apples now?"},
             {"id": "huge", "question": "How many? " + "x" * 2_000_000},
             {"id": "b", "question": "A box holds 12 pencils. How many pencils are in 4 boxes?"}]
RUN = ["stages=[answers,finetune]", "answers.input=questions.jsonl", "engine=hf", "voting.k=2",
       "voting.min_votes=1", "voting.min_agreement=0.0", "voting.tie_break=seeded",
       "voting.drop_truncated=false",
       "answers.sampling.max_tokens=48", "finetune.max_steps=1", "finetune.batch_size=2",
       "finetune.val_fraction=0", f"eval.data_dir={DATA}", "logger=none", "hydra.run.dir=run"]


def _rebuild_line(entry) -> str:
    return f"to rebuild it, delete it (rm -r {entry}) and run the same command again"


@pytest.mark.slow
def test_damaged_entries_are_found_and_a_huge_question_is_dropped(tmp_path):
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    result = run_cli(*RUN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    pipeline = read_json(run / "pipeline.json")

    # 12: the 2 MB question is recorded, by id, and the others are answered.
    samples = {r["id"]: r for r in read_jsonl(run / "answers" / "samples.jsonl")}
    assert samples["huge"]["reason"] == "too_long" and samples["huge"]["chars"] == 2_000_010
    assert len(samples["a"]["samples"]) == len(samples["b"]["samples"]) == 2
    stats = read_json(run / "answers" / "stats.json")
    assert stats["too_long"] == ["huge"] and stats["answered"] == 2

    # 14: every file the run wrote has the mode the umask gives, not mkstemp's 0600.
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "outputs" / "cache").rglob("*")
             if p.is_file() and not p.is_symlink() and not p.name.endswith(".lock")}
    assert modes and all(mode == FILE_MODE for mode in modes.values()), \
        {str(p): oct(m) for p, m in modes.items() if m != FILE_MODE}

    answers, finetune = (pipeline[s]["cache"] for s in ("answers", "finetune"))
    samples_entry = read_json(run / "answers" / "stats.json")["sampling"]["entry"]

    def rerun_fails_with(*overrides) -> str:
        again = run_cli(*RUN, *overrides, cwd=tmp_path)
        assert again.returncode == 1, again.stderr[-3000:]
        assert "Traceback" not in again.stderr
        return again.stderr.strip().splitlines()[-1]

    def damaged(path, change) -> str:
        kept = tmp_path / "kept"
        shutil.copyfile(path, kept)
        change(path)
        try:
            return rerun_fails_with()
        finally:
            shutil.copyfile(kept, path)  # whole again for the next case

    # 7: DONE present, sft.jsonl emptied or stats.json gone.
    sft = os.path.join(answers, "sft.jsonl")
    size = os.path.getsize(sft)
    assert damaged(sft, lambda p: open(p, "w").close()) == (
        f"crescent: error: answers: {answers} is damaged: sft.jsonl holds 0 bytes, {size} when it "
        f"was written; {_rebuild_line(answers)}")
    assert damaged(os.path.join(answers, "stats.json"), os.unlink) == (
        f"crescent: error: answers: {answers} is damaged: stats.json is missing; "
        f"{_rebuild_line(answers)}")
    # 6: one line cut from the samples, then a vote-sweep point reuses them.
    path = os.path.join(samples_entry, "samples.jsonl")
    text = Path(path).read_text()
    shutil.copyfile(path, tmp_path / "kept")
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in text.splitlines() if '"id": "b"' not in line))
    last = rerun_fails_with("voting.min_votes=2")
    shutil.copyfile(tmp_path / "kept", path)
    assert last.startswith(f"crescent: error: answers: samples: {samples_entry} is damaged: "
                           f"samples.jsonl holds ")
    # 5: the fine-tuned weights deleted: found before the evaluate stage would load them.
    weights = os.path.join(finetune, "model", "model.safetensors")
    assert damaged(weights, os.unlink) == (
        f"crescent: error: finetune: {finetune} is damaged: model/model.safetensors is missing; "
        f"{_rebuild_line(finetune)}")
    # Whole again: the same command reuses everything.
    assert run_cli(*RUN, cwd=tmp_path).returncode == 0


def _interrupted(tmp_path, progress, *overrides) -> subprocess.CompletedProcess:
    """Start crescent, Ctrl-C its process group once `progress` has a line, wait for it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "crescent", f"eval.data_dir={DATA}", "logger=none",
         "hydra.run.dir=run", *overrides], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        # As from a terminal: a job started in the background (CI's, say) inherits SIGINT
        # ignored, and Python then never turns it into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
        env=dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline"))
    deadline = time.time() + 600
    while lines(progress) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.long
def test_ctrl_c_in_answers_and_finetune_exits_130_with_one_line(tmp_path):
    answers = _interrupted(tmp_path, tmp_path / "run" / "answers" / "samples.jsonl",
                           "stages=[answers]", "engine=hf", "engine.batch_size=4",
                           f"answers.input={ROOT / 'tests' / 'assets' / 'questions20.jsonl'}",
                           "answers.sampling.max_tokens=64", "voting.k=2")
    finetune = _interrupted(tmp_path, tmp_path / "run" / "finetune" / "metrics.jsonl",
                            "stages=[finetune]", "finetune.max_steps=40", "finetune.batch_size=2",
                            f"finetune.input={ROOT / 'tests' / 'assets' / 'sft32.jsonl'}",
                            "finetune.checkpoint_every_n_steps=1", "finetune.val_fraction=0")
    for result in (answers, finetune):
        assert result.returncode == 130, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == (
            "crescent: interrupted; the same command resumes")
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "answers" / "DONE").exists()
    assert not (tmp_path / "run" / "finetune" / "DONE").exists()
