"""crescent-report on run dirs laid out as the pipeline writes them (real files, hand-set numbers)."""

from __future__ import annotations

import json

import pytest

from crescent import report


def _run(root, point, k, bpb_tuned, acc_tuned, kept):
    run = root / point
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"name: lr_sweep\nvoting:\n  k: {k}\n")
    # seed=3 is common to both points: the table leaves it out of the row labels.
    (run / ".hydra" / "overrides.yaml").write_text(f"- {point}\n- seed=3\n- logger=none\n")
    for stage, stats in {"questions": {"candidates": 64, "accepted": 16},
                         "answers": {"answered": 16, "kept": kept},
                         "finetune": {"examples": kept}}.items():
        (run / stage).mkdir()
        (run / stage / "stats.json").write_text(json.dumps(stats))
    (run / "evaluate").mkdir()
    (run / "evaluate" / "metrics.json").write_text(json.dumps({
        "base": {"bpb": {"bits_per_byte": 1.0, "bits_per_byte_stderr": 0.1},
                 "gsm": {"exact_match": 0.1}},
        "finetuned": {"bpb": {"bits_per_byte": bpb_tuned, "bits_per_byte_stderr": 0.1},
                      "gsm": {"exact_match": acc_tuned}},
    }))
    (run / "wandb_id").write_text(f"id-{k}\n")


def test_two_point_sweep_table_and_plots(tmp_path, capsys):
    _run(tmp_path, "finetune.lr=1e-5", 3, 0.9, 0.2, 10)
    _run(tmp_path, "finetune.lr=1e-4", 5, 0.8, 0.15, 12)
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| finetune.lr")]
    assert len(rows) == 2 and "seed=3" not in md
    # bpb: lower is better, so 0.8 is bold; exact match: higher is better, so 0.2 is bold.
    assert "**0.8**" in md and "**0.2**" in md and "**0.9**" not in md
    assert "-0.2 |" in rows[0] and "id-5" in rows[0]  # 1e-4 sorts first: delta 0.8 - 1.0
    tex = (tmp_path / "report" / "report.tex").read_text()
    assert "\\textbf{0.8}" in tex and "finetune.lr=1e-4" in tex
    for name in ("lr_sweep_funnel.png", "lr_sweep_score_vs_examples.png",
                 "lr_sweep_score_vs_votes.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"
    assert "2 runs" in capsys.readouterr().out


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no runs"):
        report.main([str(tmp_path)])
