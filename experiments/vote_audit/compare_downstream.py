"""The downstream step's two settings compared on the same problems: crescent - no_vote.

With 2 replicas a Student t interval over runs is wide (t = 12.7); this pairs the settings
document by document instead: each problem's exact match averaged over a setting's replicas,
then a percentile bootstrap over the problems of the mean difference (and of each setting
against the base). It measures how much the benchmark sample could move the gap, not the
training seed's spread: read it beside crescent-report's replica intervals.

    python experiments/vote_audit/compare_downstream.py [multirun/vote_downstream]
"""

from __future__ import annotations

import sys
from pathlib import Path

from crescent.infra.io import write_json
from crescent.intervals import bootstrap
from crescent.report import collect

TASK = "crescent_gsm8k_cot_zeroshot"
PAIRS = (("setting=crescent", "setting=no_vote"), ("setting=crescent", "base"),
         ("setting=no_vote", "base"))


def main(sweep: Path) -> dict:
    # The report's own reading of each run: its setting (replica keys left out) and, for the
    # task's headline metric, every scored document's value per model label.
    runs = [collect(p) for p in sorted(sweep.iterdir()) if (p / "evaluate").is_dir()]
    metric = runs[0]["scores"][TASK]["metric"]
    by_setting: dict[str, list[list[float]]] = {}
    for run in runs:
        by_setting.setdefault(run["setting"], []).append(
            [float(x) for x in run["scores"][TASK]["per_doc"]["finetuned"]])
    mean = {s: [sum(col) / len(col) for col in zip(*rows)] for s, rows in by_setting.items()}
    mean["base"] = [float(x) for x in runs[0]["scores"][TASK]["per_doc"]["base"]]
    result = {"task": TASK, "metric": metric, "documents": len(mean["base"]),
              "replicas": {s: len(rows) for s, rows in by_setting.items()},
              "mean": {s: sum(v) / len(v) for s, v in mean.items()}, "differences": {}}
    for a, b in PAIRS:
        diff = result["mean"][a] - result["mean"][b]
        low, high = bootstrap(metric, mean[a], mean[b])
        result["differences"][f"{a} - {b}"] = {"value": diff, "low": low, "high": high}
        print(f"{a} - {b}: {diff:+.4f} [{low:+.4f}, {high:+.4f}]  (95% paired bootstrap over "
              f"{len(mean[a])} problems)")
    out = sweep / "report" / "compare_downstream.json"
    write_json(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "multirun/vote_downstream"))
