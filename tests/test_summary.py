"""The end-of-run summary: per stage ran/reused, wall time, headline counts, outputs, next command."""

from __future__ import annotations

from crescent.infra.io import write_json
from crescent.summary import summary_lines


def test_summary_names_each_stage_its_counts_scores_and_the_next_command(tmp_path, monkeypatch):
    run = tmp_path / "outputs" / "smoke" / "run"
    write_json(run / "questions/stats.json", {"accepted": 16, "target": 16, "candidates": 40})
    write_json(run / "answers/stats.json", {"kept": 9, "questions_in": 16, "contaminated": 0,
                                            "dropped": {"tie": 7}, "truncated_share": 0.125})
    write_json(run / "finetune/stats.json", {"steps": 10, "train_loss_first": 1.25,
                                             "train_loss_final": 0.5})
    write_json(run / "evaluate/stats.json", {
        "base": {"gsm8k_bpb": {"bits_per_byte": 0.75}},
        "finetuned": {"gsm8k_bpb": {"bits_per_byte": 0.7}},
        "delta": {"finetuned": {"gsm8k_bpb": {"bits_per_byte": -0.05}}},
        "models": {"base": "/m", "finetuned": "/f"}, "n_samples": {}, "score_seconds": {}})
    summary = {"questions": {"reused": True, "wall_time_s": 61.0},
               "answers": {"reused": False, "wall_time_s": 120.5},
               "finetune": {"reused": False, "wall_time_s": 30.25},
               "evaluate": {"reused": False, "wall_time_s": 90.0}}
    monkeypatch.chdir(tmp_path)
    lines = summary_lines(run, summary, 300.0)
    assert lines[0] == "crescent: summary (300 s in all)"
    assert lines[1].split() == ["questions", "reused", "61.0", "s", "16", "of", "16", "questions",
                                "accepted", "from", "40", "candidates"]
    assert "ran" in lines[2] and "9 of 16 questions kept" in lines[2] and "tie" in lines[2]
    assert "12% of samples cut at max_tokens" in lines[2]
    assert "10 steps, train loss 1.2500 -> 0.5000" in lines[3]
    assert "gsm8k_bpb bits_per_byte: base 0.7500, finetuned 0.7000 (-0.0500)" in lines[4]
    assert lines[-2].startswith("  outputs: outputs/smoke/run/<stage>/")
    assert lines[-1] == "  next: crescent-report outputs/smoke/run"
