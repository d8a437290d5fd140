"""What verifying cache entries by content costs: sealing (DONE records every file's sha256) and
the check before each reuse, on the 0.5B model's weights and on a 150-question study's entries.

    python experiments/bench_verify.py        # prints a table, writes outputs/bench_verify.json

The 150-question study is paper_05b's shape, written as the stages write it: questions.jsonl
(150 questions), the samples entry (4 samples of ~400 tokens each), the answers stage's files,
a merged fine-tune (the 0.5B model's weights, copied) and the evaluate stage's per-sample logs
(500 GSM8K answers). Each figure is the median of 3 timings, the files in the page cache (a
reuse right after a run; a cold disk adds its read time).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import cpu_flags, write_result

from crescent import cache
from crescent.infra.models import resolve_model

ROOT = Path(__file__).resolve().parent.parent
QWEN = "qwen2.5-coder-0.5b-instruct"
ANSWER = "Each box holds 12 pencils, so 4 boxes hold 4 * 12 = 48 pencils. " * 20


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def write_lines(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def study_entries(root: Path, weights: Path) -> dict[str, Path]:
    """The entries of a 150-question study, as the stages lay them out."""
    questions = [{"id": i, "question": f"Question {i}: how many pencils are in {i} boxes?"}
                 for i in range(150)]
    entries = {name: root / name for name in ("questions", "samples", "answers", "finetune",
                                              "evaluate")}
    write_lines(entries["questions"] / "questions.jsonl", questions)
    write_lines(entries["questions"] / "rejected.jsonl", questions[:50])
    write_lines(entries["samples"] / "samples.jsonl",
                [{**q, "samples": [ANSWER] * 4, "extracted": ["48"] * 4} for q in questions])
    kept = [{**q, "answer": "48", "response": ANSWER, "votes": {"48": 4}} for q in questions]
    write_lines(entries["answers"] / "qa.jsonl", kept)
    write_lines(entries["answers"] / "sft.jsonl", [{"messages": [
        {"role": "user", "content": q["question"]}, {"role": "assistant", "content": ANSWER}]}
        for q in questions])
    shutil.copytree(weights, entries["finetune"] / "model")
    write_lines(entries["evaluate"] / "finetuned" / "samples.jsonl",
                [{"doc_id": i, "resps": [[ANSWER]]} for i in range(500)])
    return entries


def measure(name: str, dirs: list[Path]) -> dict:
    size = sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file())
    seal = timed(lambda: [cache.mark_done(d) for d in dirs])
    check = timed(lambda: [cache.damage(d) for d in dirs])
    row = {"what": name, "bytes": size, "seal_s": round(seal, 3), "check_s": round(check, 3),
           "gb_per_s": round(size / 1e9 / check, 2)}
    print(f"| {name} | {size / 1e6:,.0f} MB | {seal:.2f} s | {check:.2f} s | "
          f"{row['gb_per_s']} GB/s |", flush=True)
    return row


def main() -> None:
    weights = Path(resolve_model(QWEN))
    print(f"CPU flags: {' '.join(cpu_flags())}")
    print("| what | size | seal (DONE) | check before reuse | check rate |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=ROOT / "outputs") as tmp:
        entries = study_entries(Path(tmp), weights)
        rows = [measure("0.5B model weights (finetune entry)", [entries["finetune"]]),
                measure("150-question study, every entry", list(entries.values())),
                measure("150-question study, without the weights",
                        [d for name, d in entries.items() if name != "finetune"])]
    write_result(str(ROOT / "outputs" / "bench_verify.json"), {"rows": rows})


if __name__ == "__main__":
    main()
