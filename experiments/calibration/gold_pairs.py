"""The positive control's training data: the first N GSM8K training problems with their gold
solutions, as the gold control writes them (calculator annotations removed, `#### n` written as
the domain's final-answer line), one SFT conversation a line.

    python experiments/calibration/gold_pairs.py 400 1000     # -> outputs/calibration/gold_N.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from crescent.infra.data import require
from crescent.stages.answers import gold_rows

ROOT = Path(__file__).resolve().parents[2]
FINAL_LINE = "The answer is: {answer}"  # the math domain's final_answer_line (crescent/config.py)


def write_pairs(path: Path, n: int) -> Path:
    """The first n GSM8K training problems as SFT conversations (the bare question as the user
    turn, the gold solution as the assistant's)."""
    domain = OmegaConf.create({"final_answer_line": FINAL_LINE})
    rows = gold_rows(require(None, "gsm8k/train.jsonl"), n, domain)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": r["question"]},
                                 {"role": "assistant", "content": r["response"]}]}) + "\n"
        for r in rows), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", type=int, help="pairs per file")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "calibration")
    args = parser.parse_args()
    for n in args.sizes:
        print(write_pairs(args.out / f"gold_{n}.jsonl", n))


if __name__ == "__main__":
    main()
