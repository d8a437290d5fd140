"""Bad input through the command line: each ends in a clear error naming the key, path or
`file:line`, a non-zero exit, and no stage marked DONE."""

from __future__ import annotations

import pytest

BAD_LINES = '{"id": 0, "question": "What is 2 + 2?"}\n{"id": 1, "text": "no question"}\n'
CASES = {
    "unknown key": (["dedup.thresold=0.9"], "dedup.thresold: Key 'thresold' not in 'DedupConfig'"),
    "unknown choice": (["finetune.scheduler=cosin"],
                       "finetune.scheduler: Invalid value 'cosin', expected one of "
                       + "[cosine, linear, constant]"),
    "out of range": (["voting.min_agreement=1.5"], "voting.min_agreement=1.5: expected a share"),
    "votes above k": (["voting.k=1"], "voting.min_votes=2 is more than voting.k=1"),
    "wrong type": (["voting.k=abc"], "Value 'abc' of type 'str' could not be converted"),
    "unknown stage": (["stages=[questoins]"], "stages: unknown stage 'questoins'"),
    "missing model": (["stages=[questions]", "engine=hf", "dedup=none",
                       "model.name=/nonexistent/model"], "model '/nonexistent/model': no such directory"),
    "unreadable line": (["stages=[answers]", "answers.input=bad.jsonl"],
                        "bad.jsonl:2: no 'question'"),
    "empty questions": (["stages=[answers]", "answers.input=empty.jsonl"],
                        "empty.jsonl: no questions to answer"),
    "missing sft file": (["stages=[finetune]", "finetune.input=nope.jsonl"], "nope.jsonl"),
    "unwritable dir": (["stages=[questions]", "cache_dir=/proc/crescent-cache"],
                       "crescent: error: /proc/crescent-cache"),
    "unknown source": (["stages=[questions]", "questions.source=evol"],
                       "questions.source: Invalid value 'evol', expected one of "
                       + "[bait, magpie, seed_aug]"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_error(cli, tmp_path, case):
    (tmp_path / "bad.jsonl").write_text(BAD_LINES)
    (tmp_path / "empty.jsonl").write_text("")
    overrides, expected = CASES[case]
    result = cli(*overrides, "logger=none", "hydra.run.dir=run")
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if expected in line]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("run/*/DONE"))
