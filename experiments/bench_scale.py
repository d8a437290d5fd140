"""Benchmark and cost model: offline vs served vLLM tokens/s on this machine, and what the
rates mean for the paper's 150k setting on 1, 8 and 64 GPUs.

    python experiments/bench_scale.py [--prompts 32] [--max-tokens 96] [--out outputs/bench_scale.json]
    python experiments/bench_scale.py --tokens-per-s 2500 --skip-measure   # projection only
    python experiments/bench_scale.py --stats outputs/smoke/<run>          # token shares of a run

Measured in one run, on the questions stage's bait prompts and sampling (temperature 1, top_p 0.95): the offline engine
(`engine=vllm`, in a subprocess), then one `vllm serve` of the embedded model on 127.0.0.1
driven by `engine=openai` at concurrency 1, 8 and 32. tokens/s counts generated tokens.

The projection multiplies out the generated tokens of the setting (questions: candidates per
accepted question x tokens per candidate; answers: k samples x tokens per answer) and divides
by the rate per device (measured here, or `--tokens-per-s` measured on a GPU with this script)
times the number of devices: replicas share nothing, so data parallelism scales linearly
except for each replica's start-up, which is added once.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEVICES = (1, 8, 64)


def served(prompts: int, max_tokens: int, log: Path) -> list[dict]:
    from bench_engines import bench_conversations, stage_sampling  # beside this script

    from crescent.config import EngineConfig, ModelConfig
    from crescent.engines import make_engine
    from crescent.infra.models import SMOLLM2, resolve_model
    sys.path.insert(0, str(HERE.parent))  # the repository root: tests/ starts the server
    from tests.local_server import LocalServer

    conversations = bench_conversations(prompts)
    sampling = stage_sampling(max_tokens)
    started = time.perf_counter()
    server = LocalServer(resolve_model(ModelConfig(name=SMOLLM2).name), log)
    start_s = time.perf_counter() - started
    rows = []
    try:
        for concurrency in (1, 8, 32):
            engine = make_engine(EngineConfig(name="openai", options={
                "endpoints": [server.url], "concurrency": concurrency}), ModelConfig(name=SMOLLM2))
            started = time.perf_counter()
            generations = engine.chat(conversations, sampling, n=1, seed=0)
            gen_s = time.perf_counter() - started
            tokens = sum(g.total_tokens for g in generations)
            rows.append({"engine": f"served c={concurrency}", "start_s": round(start_s, 1),
                         "generate_s": round(gen_s, 1), "tokens": tokens,
                         "tokens_per_s": round(tokens / gen_s, 1)})
            print(f"served, concurrency {concurrency}: {rows[-1]['tokens_per_s']} tokens/s",
                  flush=True)
    finally:
        server.kill()
    return rows


def offline(prompts: int, max_tokens: int) -> dict:
    cmd = [sys.executable, str(HERE / "bench_engines.py"), "--child", "vllm", "--prompts",
           str(prompts), "--max-tokens", str(max_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"offline vllm failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.split("RESULT ", 1)[1])
    row["engine"] = "offline"
    return row


def token_budget(args) -> dict:
    """Generated tokens of the setting; shares from a run's stats.json files if given."""
    per_candidate, candidates_per_q, per_answer = (args.question_tokens, args.candidates_per_question,
                                                   args.answer_tokens)
    if args.stats:
        q = json.loads((Path(args.stats) / "questions" / "stats.json").read_text())
        a = json.loads((Path(args.stats) / "answers" / "stats.json").read_text())
        per_candidate = q["tokens"]["completion"] / q["candidates"]
        candidates_per_q = q["candidates"] / max(1, q["accepted"])
        per_answer = a["tokens"]["completion"] / max(1, a["samples"])
    questions = args.questions * candidates_per_q * per_candidate
    answers = args.questions * args.k * per_answer
    return {"questions": args.questions, "k": args.k,
            "tokens_per_candidate": round(per_candidate, 1),
            "candidates_per_question": round(candidates_per_q, 2),
            "tokens_per_answer": round(per_answer, 1),
            "question_tokens": round(questions), "answer_tokens": round(answers),
            "total_tokens": round(questions + answers)}


def project(budget: dict, tokens_per_s: float, start_s: float) -> list[dict]:
    rows = []
    for devices in DEVICES:
        hours = (budget["total_tokens"] / (tokens_per_s * devices) + start_s) / 3600
        rows.append({"devices": devices, "wall_h": round(hours, 2),
                     "device_h": round(hours * devices, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", default="outputs/bench_scale.json")
    parser.add_argument("--skip-measure", action="store_true", help="projection only")
    parser.add_argument("--tokens-per-s", type=float,
                        help="generated tokens/s of one GPU replica (measure it with this script)")
    parser.add_argument("--start-s", type=float, default=120.0,
                        help="start-up of one GPU replica, seconds")
    parser.add_argument("--stats", help="a run dir whose questions/answers stats give the token shares")
    parser.add_argument("--questions", type=int, default=150_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--candidates-per-question", type=float, default=2.0)
    parser.add_argument("--question-tokens", type=float, default=100.0)
    parser.add_argument("--answer-tokens", type=float, default=300.0)
    args = parser.parse_args()

    result: dict = {"machine": platform.processor() or platform.machine(),
                    "when": time.strftime("%Y-%m-%d %H:%M")}
    budget = token_budget(args)
    result["budget"] = budget
    if not args.skip_measure:
        out_dir = Path(args.out).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = [offline(args.prompts, args.max_tokens)]
        print(f"offline: {rows[0]['tokens_per_s']} tokens/s", flush=True)
        rows += served(args.prompts, args.max_tokens, out_dir / "bench_scale_server.log")
        result["engines"] = rows
        print(f"\n{args.prompts} prompts x up to {args.max_tokens} new tokens, embedded model")
        print(f"{'engine':<16}{'start s':>9}{'generate s':>12}{'tokens':>8}{'tokens/s':>10}")
        for r in rows:
            print(f"{r['engine']:<16}{r['start_s']:>9}{r['generate_s']:>12}{r['tokens']:>8}"
                  f"{r['tokens_per_s']:>10}")
        best_served = max(r["tokens_per_s"] for r in rows[1:])
        print(f"best served / offline: {best_served / rows[0]['tokens_per_s']:.2f}")
        result["projection_this_machine"] = project(budget, rows[0]["tokens_per_s"],
                                                     rows[0]["start_s"])

    print(f"\n{budget['questions']:,} questions: {budget['candidates_per_question']} candidates "
          f"each x {budget['tokens_per_candidate']} tokens, {budget['k']} answers x "
          f"{budget['tokens_per_answer']} tokens = {budget['total_tokens'] / 1e6:.1f}M generated "
          "tokens")
    projections = [("this machine (offline vLLM)", result.get("projection_this_machine"))]
    if args.tokens_per_s:
        result["projection_gpu"] = project(budget, args.tokens_per_s, args.start_s)
        projections.append((f"GPU at {args.tokens_per_s:g} tokens/s", result["projection_gpu"]))
    for label, rows in projections:
        if rows:
            print(f"{label}: " + "; ".join(
                f"{r['devices']} x: {r['wall_h']} h wall, {r['device_h']} device-h" for r in rows))

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
