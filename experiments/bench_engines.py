"""Benchmark: generation tokens/s of the vllm and hf engines on the embedded model, one run.

    python experiments/bench_engines.py [--prompts 64] [--max-tokens 128] [--out outputs/bench_engines.json]

Each engine runs in its own subprocess (vLLM does not free memory in-process) on what the
questions stage sends it: the math domain's bait prompt, identical in every request, each
request with its own seed derived from the run seed, sampled with the stage's settings
(temperature 1, top_p 0.95) up to 128 new tokens. Start-up (model load, KV-cache set-up) is
timed apart from generation; tokens/s counts generated tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ENGINES = ["vllm", "hf"]


CONF = Path(__file__).resolve().parent.parent / "conf"


def bench_conversations(prompts: int) -> list[list[dict]]:
    """The questions stage's bait request, `prompts` times: the same in every engine benchmark
    (also bench_scale.py)."""
    from omegaconf import OmegaConf

    bait = OmegaConf.load(CONF / "domain" / "math.yaml").bait_prompt
    return [[{"role": "user", "content": bait}] for _ in range(prompts)]


def stage_sampling(max_tokens: int):
    """The questions stage's sampling settings (its config defaults), `max_tokens` long."""
    from crescent.config import QuestionsConfig, SamplingConfig

    stage = QuestionsConfig().sampling
    return SamplingConfig(temperature=stage.temperature, top_p=stage.top_p, max_tokens=max_tokens)


def measure(engine_name: str, prompts: int, max_tokens: int) -> dict:
    from crescent.config import EngineConfig, ModelConfig
    from crescent.engines import make_engine
    from crescent.infra.models import SMOLLM2

    started = time.perf_counter()
    engine = make_engine(EngineConfig(name=engine_name, batch_size=prompts), ModelConfig(name=SMOLLM2))
    start_s = time.perf_counter() - started
    conversations = bench_conversations(prompts)
    sampling = stage_sampling(max_tokens)
    started = time.perf_counter()
    # One seed for the call: the engine derives each request's own from it (identical prompts
    # with one shared seed would return identical samples).
    generations = engine.chat(conversations, sampling, n=1, seed=0)
    gen_s = time.perf_counter() - started
    tokens = sum(g.total_tokens for g in generations)
    return {
        "engine": engine_name,
        "start_s": round(start_s, 1),
        "generate_s": round(gen_s, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / gen_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", default="outputs/bench_engines.json")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.prompts, args.max_tokens)))
        return

    rows = []
    for name in ENGINES:
        cmd = [sys.executable, __file__, "--child", name, "--prompts", str(args.prompts),
               "--max-tokens", str(args.max_tokens)]
        out = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.split("RESULT ", 1)[1]))
    ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]

    print(f"\n{args.prompts} bait prompts x up to {args.max_tokens} new tokens (top_p 0.95), "
          f"embedded model, load average {os.getloadavg()[0]:.2f}")
    print(f"{'engine':<8}{'start s':>10}{'generate s':>12}{'tokens':>9}{'tokens/s':>10}")
    for r in rows:
        print(f"{r['engine']:<8}{r['start_s']:>10}{r['generate_s']:>12}{r['tokens']:>9}"
              f"{r['tokens_per_s']:>10}")
    print(f"vllm/hf tokens/s ratio: {ratio:.2f}")

    write_result(args.out, {
        "prompts": args.prompts, "max_tokens": args.max_tokens, "engines": rows,
        "vllm_over_hf": round(ratio, 2), "load_avg_1m": round(os.getloadavg()[0], 2),
        "sampling": {"temperature": 1.0, "top_p": 0.95, "prompt": "domain math bait_prompt"}})


def write_result(out: str, result: dict) -> None:
    """A benchmark's JSON, with the machine and the time it ran (also bench_pipeline.py)."""
    result = {**result, "machine": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M")}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
