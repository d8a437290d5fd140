"""The CPU study in miniature, through the same command path as `crescent -m
experiment=cpu_paper`: 2 settings (crescent, no_vote) x 2 fine-tune replicas on the embedded
model, tiny, so that the study cannot silently break (slow)."""

from __future__ import annotations

import pytest

from crescent import report
from crescent.infra.io import read_json
from tests.conftest import DATA

# finetune.seed 0 and 3 shuffle two examples into different orders (0 and 1 would not).
MINIATURE = ["experiment=cpu_paper", "setting=crescent,no_vote", "finetune.seed=0,3",
             "engine=hf", "dedup=minhash", "questions.target=8", "questions.max_candidates=24",
             "questions.batch_size=12", "questions.sampling.max_tokens=96",
             "answers.sampling.max_tokens=128", "finetune.max_steps=2", "finetune.max_epochs=-1",
             "finetune.batch_size=1", "finetune.max_length=256",
             "eval.tasks=[crescent_gsm8k_gold_bpb]",
             "eval.limit=10", f"eval.data_dir={DATA}", "logger=none",
             "hydra.sweep.subdir=${hydra.job.num}"]


@pytest.mark.slow
@pytest.mark.long
def test_cpu_paper_in_miniature(cli, tmp_path):
    result = cli("-m", *MINIATURE, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "multirun" / "cpu_paper").glob("[0-9]"))
    assert len(runs) == 4
    settings = {run: next(o for o in (run / ".hydra" / "overrides.yaml").read_text().split("\n")
                          if "setting=" in o).split("=")[1] for run in runs}
    answers = {run: read_json(run / "answers" / "stats.json") for run in runs}
    # One generation: the questions and the 4 samples per question are drawn once, by the
    # first of the two answers entries (one per setting; replicas share theirs).
    entries = {(run / "answers").resolve(): stats for run, stats in answers.items()}
    assert len(entries) == 2
    assert sorted(a["sampling"]["reused"] for a in entries.values()) == [False, True]
    assert len({(run / "answers" / "samples.jsonl").resolve() for run in runs}) == 1
    assert len({(run / "questions").resolve() for run in runs}) == 1
    crescent = next(a["kept"] for run, a in answers.items() if settings[run] == "crescent")
    for run, stats in answers.items():
        if settings[run] == "no_vote":  # cut to the consensus set's size
            assert stats["kept"] == min(crescent, stats["answered"] - stats["dropped"].get(
                "abstained", 0))
        assert read_json(run / "finetune" / "stats.json")["conversations"] == stats["kept"]

    report.main([str(tmp_path / "multirun" / "cpu_paper")])
    md = (tmp_path / "multirun" / "cpu_paper" / "report" / "report.md").read_text()
    for setting in ("crescent", "no_vote"):
        assert any(line.startswith(f"| setting={setting} | 2 |") for line in md.splitlines()), md
    print(f"\n{md}")
