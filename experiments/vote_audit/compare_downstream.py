"""The downstream step's two settings compared on the same problems: crescent - no_vote.

With 2 replicas a Student t interval over runs is wide (t = 12.7); this pairs the settings
document by document instead: each problem's exact match averaged over a setting's replicas,
then a percentile bootstrap over the problems of the mean difference (and of each setting
against the base). It measures how much the benchmark sample could move the gap, not the
training seed's spread: read it beside crescent-report's replica intervals.

    python experiments/vote_audit/compare_downstream.py [multirun/vote_downstream]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from crescent.intervals import bootstrap
from crescent.report import per_document

TASK, METRIC = "crescent_gsm8k_cot_zeroshot", "exact_match,flexible-extract"


def scores(run: Path, label: str) -> list[float]:
    return [float(x) for x in per_document(run / "evaluate" / label / f"samples_{TASK}.jsonl",
                                           METRIC)]


def main(sweep: Path) -> dict:
    runs = sorted(p for p in sweep.iterdir() if (p / "evaluate").is_dir())
    by_setting: dict[str, list[list[float]]] = {}
    for run in runs:
        setting = next(part.split("=")[1] for part in run.name.split(",")
                       if part.startswith("setting="))
        by_setting.setdefault(setting, []).append(scores(run, "finetuned"))
    mean = {s: [sum(col) / len(col) for col in zip(*rows)] for s, rows in by_setting.items()}
    mean["base"] = scores(runs[0], "base")
    result = {"task": TASK, "metric": METRIC, "documents": len(mean["base"]),
              "replicas": {s: len(rows) for s, rows in by_setting.items()},
              "mean": {s: sum(v) / len(v) for s, v in mean.items()}, "differences": {}}
    for a, b in (("crescent", "no_vote"), ("crescent", "base"), ("no_vote", "base")):
        diff = result["mean"][a] - result["mean"][b]
        low, high = bootstrap(METRIC, mean[a], mean[b])
        result["differences"][f"{a} - {b}"] = {"value": diff, "low": low, "high": high}
        print(f"{a} - {b}: {diff:+.4f} [{low:+.4f}, {high:+.4f}]  (95% paired bootstrap over "
              f"{len(mean[a])} problems)")
    out = sweep / "report" / "compare_downstream.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "multirun/vote_downstream"))
