"""The base's GSM8K score at a shorter answer cap, derived from its answers at 512 tokens.

    python experiments/calibration/at_cap.py multirun/calibration/base/evaluate/base [--cap 256]

Greedy decoding writes the same first N tokens whatever the cap beyond N, so cutting each
512-token answer to its first `--cap` tokens gives what a scoring at that cap writes (up to the
scoring floor: 0.6% of problems flip between two scorings of one model). The cut answers are
scored with the task's own lm-eval filters and metric (crescent_gsm8k_cot_zeroshot), and the
uncut ones too, which must reproduce the stage's score: the check that this scores as it does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASK = "crescent_gsm8k_cot_zeroshot"
FILTERS = {"strict-match": ("The answer is:? (\\-?[0-9\\.\\,]+)", 0),
           "flexible-extract": ("(-?[$0-9.,]{2,})|(-?[0-9]+)", -1)}
IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def score(answers: list[str], targets: list[str], name: str) -> float:
    """The task's filter `name` then exact_match (ignore_case, its regexes_to_ignore), as lm-eval."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    pattern, group = FILTERS[name]
    picked = [r[0] for r in RegexFilter(regex_pattern=pattern, group_select=group).apply(
        [[a] for a in answers], [{}] * len(answers))]
    hits = exact_match_hf_evaluate(picked, targets, regexes_to_ignore=IGNORE, ignore_case=True,
                                   ignore_punctuation=False)["exact_match"]
    return float(hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label_dir", type=Path, help="an evaluate label dir (<run>/evaluate/base)")
    parser.add_argument("--cap", type=int, default=256)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    spec = json.loads((args.label_dir / "spec.json").read_text())
    model = spec["runs"][0]["model_args"]["pretrained"]
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
    for name in FILTERS:
        print(f"{name}: at 512 {score(full, targets, name):.4f} (the stage's, recomputed), "
              f"at {args.cap} {score(cut, targets, name):.4f}")


if __name__ == "__main__":
    main()
