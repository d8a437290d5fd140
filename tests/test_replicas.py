"""A tiny sweep on the embedded model (engine=hf): 2 learning rates x 2 finetune.seed replicas.
The data stages run once, the base model is scored once, and crescent-report pools the seeds
into mean ± t interval rows that match a hand computation from the runs' metrics.json (slow)."""

from __future__ import annotations

import math

import pytest

from crescent import report
from crescent.infra.io import read_json
from tests.conftest import TINY_SMOKE as TINY

BPB = "crescent_gsm8k_gold_bpb"


@pytest.mark.slow
@pytest.mark.long
def test_seed_replicas_share_data_and_base_and_pool_in_the_report(cli, tmp_path, capsys):
    from scipy import stats

    result = cli("-m", *TINY, "finetune.lr=1e-5,1e-4", "finetune.seed=1,2", timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "multirun" / "smoke").glob("[0-9]"))
    assert len(runs) == 4
    pipelines = [read_json(run / "pipeline.json") for run in runs]
    # questions and answers ran in the first job only; every fine-tune ran.
    assert [p["questions"]["reused"] for p in pipelines] == [False, True, True, True]
    assert [p["answers"]["reused"] for p in pipelines] == [False, True, True, True]
    assert not any(p["finetune"]["reused"] for p in pipelines)
    evals = [read_json(run / "evaluate" / "stats.json") for run in runs]
    assert ["base" in e["score_seconds"] for e in evals] == [True, False, False, False]
    assert len({(run / "evaluate" / "base").resolve() for run in runs}) == 1

    report.main([str(tmp_path / "multirun")])
    printed = capsys.readouterr().out
    md = (tmp_path / "multirun" / "report" / "report.md").read_text()
    assert md in printed
    metrics = {run: read_json(run / "evaluate" / "metrics.json") for run in runs}
    overrides = {run: (run / ".hydra" / "overrides.yaml").read_text() for run in runs}
    for lr in ("1e-05", "0.0001"):  # as Hydra records 1e-5 and 1e-4
        tuned = [m["finetuned"][BPB]["bits_per_byte"] for run, m in metrics.items()
                 if f"finetune.lr={lr}" in overrides[run]]
        base = metrics[runs[0]]["base"][BPB]["bits_per_byte"]
        mean = sum(tuned) / 2
        half = stats.t.ppf(0.975, 1) * math.sqrt(sum((v - mean) ** 2 for v in tuned)) / math.sqrt(2)
        row = next(line for line in md.splitlines() if line.startswith(f"| finetune.lr={lr} |"))
        assert row.startswith(f"| finetune.lr={lr} | 2 |")
        assert f"{mean:.4f} ± {half:.4f}" in row and f"{mean - base:+.4f} ± {half:.4f}" in row
    assert f"{BPB}: eval.limit=20, 20 documents scored" in md
    print(f"\n{md}")
