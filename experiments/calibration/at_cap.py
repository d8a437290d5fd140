"""A model's GSM8K score at a shorter answer cap, derived from its answers at the scoring's cap.

    python experiments/calibration/at_cap.py multirun/calibration/base/evaluate/base [--cap 256]

Greedy decoding writes the same first N tokens whatever the cap beyond N, so cutting each
answer (up to 512 tokens in the calibration protocol) to its first `--cap` tokens gives what a scoring at that cap writes (up to the
scoring floor: 0.6% of problems flip between two scorings of one model). The cut answers are
scored with the task's own filters and metric as the scoring recorded them (results.json), by
lm-eval's code, and the uncut ones too, which must reproduce the stage's score: the check that
this scores as it does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASK = "crescent_gsm8k_cot_zeroshot"


def score(answers: list[str], targets: list[str], config: dict, name: str) -> float:
    """exact_match after the task's filter `name`, both as the scoring's results.json records
    the task (its filter_list and metric_list), run through lm-eval's own filters and metric."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters import get_filter

    steps = next(f["filter"] for f in config["filter_list"] if f["name"] == name)
    picked = [[a] for a in answers]
    for step in steps:
        kwargs = {k: v for k, v in step.items() if k != "function"}
        picked = get_filter(step["function"])(**kwargs).apply(picked, [{}] * len(answers))
    metric = next(m for m in config["metric_list"] if m["metric"] == "exact_match")
    kwargs = {k: v for k, v in metric.items() if k not in ("metric", "aggregation",
                                                           "higher_is_better")}
    return float(exact_match_hf_evaluate(list(picked), targets, **kwargs)["exact_match"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label_dir", type=Path, help="an evaluate label dir (<run>/evaluate/base)")
    parser.add_argument("--cap", type=int, default=256)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    spec = json.loads((args.label_dir / "spec.json").read_text())
    model = spec["runs"][0]["model_args"]["pretrained"]
    config = json.loads((args.label_dir / "results.json").read_text())["configs"][TASK]
    scored_cap = config["generation_kwargs"]["max_gen_toks"]
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = {}  # lm-eval writes a row per document and filter: the answer is the same in each
    for line in (args.label_dir / f"samples_{TASK}.jsonl").open():
        row = json.loads(line)
        rows.setdefault(row["doc_id"], row)
    rows = list(rows.values())
    full = [r["resps"][0][0] for r in rows]
    targets = [r["target"] for r in rows]
    ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in full]
    cut = [tokenizer.decode(t[:args.cap]) if len(t) > args.cap else a for a, t in zip(full, ids)]
    reached = sum(len(t) >= args.cap for t in ids)
    print(f"{len(rows)} answers of {model}; {reached} ({reached / len(rows):.3f}) reach "
          f"{args.cap} tokens")
    for name in [f["name"] for f in config["filter_list"]]:
        print(f"{name}: at {scored_cap} {score(full, targets, config, name):.4f} (the stage's, "
              f"recomputed), at {args.cap} {score(cut, targets, config, name):.4f}")


if __name__ == "__main__":
    main()
