"""Benchmark: what a second job on the same CPU costs: vLLM generation alone, then two of the
same generation at once, one run.

    python experiments/bench_contention.py [--model qwen2.5-coder-0.5b-instruct] [--prompts 64]
                                           [--max-tokens 128] [--dtype auto]
                                           [--out outputs/bench_contention.json]

Each generation is `experiments/bench_engines.py`'s vllm measurement (the questions stage's
bait prompt, `--prompts` requests of up to `--max-tokens` new tokens) in its own process. The
table gives tokens/s alone and of each of the two side by side, and the slowdown: what a run
started beside another heavy one (a study, a CI run) pays, and why crescent warns at the start
of a stage when other processes keep the CPU busy (crescent/infra/load.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import child_command, child_result, write_result


def start(args) -> subprocess.Popen:
    return subprocess.Popen(child_command(args, "vllm", args.model), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def result(child: subprocess.Popen) -> dict:
    out, err = child.communicate()
    return child_result(child.returncode, out, err, "the vllm generation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default="outputs/bench_contention.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    alone = result(start(args))
    pair = [start(args), start(args)]  # started together: their generations overlap
    beside = [result(child) for child in pair]
    slowdown = [round(alone["tokens_per_s"] / b["tokens_per_s"], 1) for b in beside]
    print(f"\n{args.model}, vllm, {args.prompts} prompts x up to {args.max_tokens} tokens, dtype "
          f"{args.dtype}, {os.cpu_count()} cores, load average before {load_before:.2f}")
    print(f"{'run':<22}{'start s':>9}{'generate s':>12}{'tokens/s':>10}")
    for name, r in [("alone", alone), ("beside another, 1", beside[0]),
                    ("beside another, 2", beside[1])]:
        print(f"{name:<22}{r['start_s']:>9}{r['generate_s']:>12}{r['tokens_per_s']:>10}")
    print(f"slowdown beside another: {slowdown[0]}x and {slowdown[1]}x")
    write_result(args.out, {"model": args.model, "prompts": args.prompts,
                            "max_tokens": args.max_tokens, "dtype": args.dtype,
                            "alone": alone, "beside": beside, "slowdown": slowdown,
                            "load_avg_before": round(load_before, 2)})


if __name__ == "__main__":
    main()
