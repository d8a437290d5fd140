"""crescent-size: the detectable effect and a plan's cost from a pilot's files, by hand."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

from crescent.infra.io import write_json

TASK = "crescent_gsm8k_cot_zeroshot"
METRIC = "exact_match,flexible-extract"


def _label(path, scores, seconds):
    """An evaluate label dir as the stage leaves it: results, per-sample log, stats."""
    path.mkdir(parents=True)
    write_json(path / "results.json", {"results": {TASK: {
        "alias": TASK, METRIC: sum(scores) / len(scores),
        "exact_match_stderr,flexible-extract": 0.1}}})
    rows = [{"doc_id": i, "filter": f, "exact_match": float(s if f == "flexible-extract" else 0)}
            for i, s in enumerate(scores) for f in ("strict-match", "flexible-extract")]
    (path / f"samples_{TASK}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(path.parent / "stats.json", {"score_seconds": {path.name: seconds}})
    return path


def test_size_a_study_from_a_test_retest_and_a_pilot_fine_tune(tmp_path):
    first = [1, 1, 0, 0, 1, 0, 1, 0, 0, 1] * 10
    second = list(first)
    for i in (0, 2, 13, 25, 40, 41, 57, 88):  # 8 of 100 flip
        second[i] = 1 - second[i]
    a = _label(tmp_path / "base" / "evaluate" / "base", first, 1800.0)
    b = _label(tmp_path / "retest" / "evaluate" / "base", second, 1500.0)
    write_json(tmp_path / "ft" / "stats.json", {"steps": 50, "train_time_s": 1000.0})
    out = tmp_path / "size.json"
    result = subprocess.run(
        [sys.executable, "-m", "crescent.report.sizing", str(a), str(b), "--contrasts", "4",
         "--problems", "1319", "--effect", "0.03", "--finetune", str(tmp_path / "ft"),
         "--plan", "gold=390x2", "rft=100x4", "--replicas", "2", "--json", str(out)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    sized = json.loads(out.read_text())
    diffs = [x - y for x, y in zip(first, second)]
    sd = statistics.stdev(diffs)
    z = statistics.NormalDist().inv_cdf(1 - 0.05 / 8) + statistics.NormalDist().inv_cdf(0.8)
    assert sized["discordance"] == 0.08 and sized["metric"] == METRIC
    assert sized["detectable"]["100"] == z * sd / 10
    assert sized["detectable"]["1319"] == z * sd / math.sqrt(1319)
    assert sized["problems_for_effect"]["0.03"] == math.ceil((z * sd / 0.03) ** 2)
    assert sized["arms"]["gold"]["steps"] == 98 and sized["arms"]["rft"]["steps"] == 50
    assert sized["arms"]["gold"]["hours_each"] == (98 * 20 + 1650) / 3600
    assert sized["total_hours"] == 2 * ((98 * 20 + 1650) + (50 * 20 + 1650)) / 3600
    assert "| 1319 |" in result.stdout


def test_two_scorings_of_other_problems_are_one_line(tmp_path):
    a = _label(tmp_path / "a" / "evaluate" / "base", [1, 0, 1], 1.0)
    b = _label(tmp_path / "b" / "evaluate" / "base", [1, 0], 1.0)
    result = subprocess.run([sys.executable, "-m", "crescent.report.sizing", str(a), str(b)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"crescent-size: error: the two scorings hold 3 and 2 "
                                     f"documents of {TASK}: score the same problems twice")
