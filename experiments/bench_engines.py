"""Benchmark: generation tokens/s of the vllm and hf engines on each built-in model, one run.

    python experiments/bench_engines.py [--models NAME ...] [--prompts 64] [--max-tokens 128]
                                        [--out outputs/bench_engines.json]
    python experiments/bench_engines.py --top-p [--models NAME ...] [--dtype auto]

`--top-p` instead times the vllm engine on the answers stage's workload (GSM8K questions,
temperature 0.7, top-p 0.95) with crescent's nucleus (crescent/engines/cpu_top_p.py) and with
vLLM's own top-p, which sorts the vocabulary, and, as the floor, with top-p off.

Each engine runs in its own subprocess (vLLM does not free memory in-process) on what the
questions stage sends it: the math domain's bait prompt, identical in every request, each
request with its own seed derived from the run seed, sampled with the stage's settings
(temperature 1, top_p 0.95) up to 128 new tokens. Start-up (model load, KV-cache set-up) is
timed apart from generation; tokens/s counts generated tokens. Models default to every
built-in one (crescent/infra/models.py), float32 on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ENGINES = ["vllm", "hf"]


CONF = Path(__file__).resolve().parent.parent / "conf"


def bench_conversations(prompts: int, workload: str = "questions") -> list[list[dict]]:
    """What a stage sends, `prompts` requests: the questions stage's bait request (the same in
    every engine benchmark, also bench_scale.py), or the answers stage's prompt on the first
    GSM8K test questions (longer outputs: chain of thought)."""
    from omegaconf import OmegaConf

    domain = OmegaConf.load(CONF / "domain" / "math.yaml")
    if workload == "questions":
        return [[{"role": "user", "content": domain.bait_prompt}] for _ in range(prompts)]
    from itertools import islice

    from crescent.infra.data import require
    from crescent.infra.io import read_jsonl

    rows = islice(read_jsonl(require(None, "gsm8k/test.jsonl")), prompts)
    return [[{"role": "user", "content": domain.answer_prompt.format(question=r["question"])}]
            for r in rows]


def stage_sampling(max_tokens: int, workload: str = "questions"):
    """The stage's sampling settings (its config defaults), `max_tokens` long."""
    from crescent.config import AnswersConfig, QuestionsConfig, SamplingConfig

    stage = (QuestionsConfig() if workload == "questions" else AnswersConfig()).sampling
    return SamplingConfig(temperature=stage.temperature, top_p=stage.top_p, max_tokens=max_tokens)


def measure(engine_name: str, prompts: int, max_tokens: int,
            model: str = "smollm2-135m-instruct", dtype: str = "float32",
            workload: str = "questions", top_p: str = "crescent") -> dict:
    """One engine's start-up and generation; `top_p`: crescent's nucleus (on CPU vLLM), vLLM's
    own sort (`vllm`), or none (`off`, top-p 1)."""
    from crescent.config import EngineConfig, ModelConfig
    from crescent.engines import make_engine

    started = time.perf_counter()
    engine = make_engine(EngineConfig(name=engine_name, batch_size=prompts),
                         ModelConfig(name=model, dtype=dtype))
    start_s = time.perf_counter() - started
    conversations = bench_conversations(prompts, workload)
    sampling = stage_sampling(max_tokens, workload)
    if top_p == "off":
        sampling.top_p = 1.0
    elif top_p == "vllm":
        from vllm.v1.sample.ops import topk_topp_sampler as ops

        ops.apply_top_k_top_p = getattr(ops.apply_top_k_top_p, "original",
                                        ops.apply_top_k_top_p)
    started = time.perf_counter()
    # One seed for the call: the engine derives each request's own from it (identical prompts
    # with one shared seed would return identical samples).
    generations = engine.chat(conversations, sampling, n=1, seed=0)
    gen_s = time.perf_counter() - started
    tokens = sum(g.total_tokens for g in generations)
    return {
        "model": model,
        "engine": engine_name,
        "dtype": dtype,
        "workload": workload,
        "top_p": top_p,
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
    parser.add_argument("--models", nargs="+", default=None, help="default: every built-in")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="smollm2-135m-instruct", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--top-p", action="store_true",
                        help="crescent's top-p against vLLM's sort and none, on the vllm engine")
    parser.add_argument("--child-workload", default="questions", help=argparse.SUPPRESS)
    parser.add_argument("--child-top-p", default="crescent", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.prompts, args.max_tokens,
                                             args.model, args.dtype, args.child_workload,
                                             args.child_top_p)))
        return
    from crescent.infra.models import BUILTIN

    if args.top_p:
        compare_top_p(args, args.models or list(BUILTIN))
        return

    rows, load = [], []
    for model in args.models or list(BUILTIN):
        for name in ENGINES:
            rows.append(child(args, name, model))
            load.append(os.getloadavg()[0])
    ratios = {model: round(vllm["tokens_per_s"] / hf["tokens_per_s"], 2)
              for model in dict.fromkeys(r["model"] for r in rows)
              for vllm in rows if vllm["model"] == model and vllm["engine"] == "vllm"
              for hf in rows if hf["model"] == model and hf["engine"] == "hf"}

    print(f"\n{args.prompts} bait prompts x up to {args.max_tokens} new tokens (top_p 0.95), "
          f"load average {min(load):.2f}-{max(load):.2f}, CPU flags: {' '.join(cpu_flags())}")
    print(f"{'model':<30}{'engine':<8}{'start s':>10}{'generate s':>12}{'tokens':>9}"
          f"{'tokens/s':>10}")
    for r in rows:
        print(f"{r['model']:<30}{r['engine']:<8}{r['start_s']:>10}{r['generate_s']:>12}"
              f"{r['tokens']:>9}{r['tokens_per_s']:>10}")
    for model, ratio in ratios.items():
        print(f"{model}: vllm/hf tokens/s ratio {ratio:.2f}")

    write_result(args.out, {
        "prompts": args.prompts, "max_tokens": args.max_tokens, "engines": rows,
        "vllm_over_hf": ratios, "load_avg_1m": [round(v, 2) for v in load],
        "sampling": {"temperature": 1.0, "top_p": 0.95, "prompt": "domain math bait_prompt"}})


def child_command(args, engine: str, model: str, workload: str = "questions",
                  top_p: str = "crescent") -> list[str]:
    """The command that runs `measure` in a process of its own (vLLM does not free memory
    in-process); `child_result` reads what it printed."""
    return [sys.executable, __file__, "--child", engine, "--model", model, "--prompts",
            str(args.prompts), "--max-tokens", str(args.max_tokens), "--dtype", args.dtype,
            "--child-workload", workload, "--child-top-p", top_p]


def child_result(returncode: int, stdout: str, stderr: str, what: str) -> dict:
    if returncode != 0:
        sys.exit(f"{what} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.split("RESULT ", 1)[1])


def child(args, engine: str, model: str, workload: str = "questions",
          top_p: str = "crescent") -> dict:
    """`measure` in a process of its own, waited for."""
    out = subprocess.run(child_command(args, engine, model, workload, top_p), check=False,
                         capture_output=True, text=True)
    return child_result(out.returncode, out.stdout, out.stderr, f"{model} on {engine}")


def compare_top_p(args, models: list[str]) -> None:
    """The answers workload on the vllm engine with each top-p: crescent's, vLLM's, none."""
    rows, load = [], []
    for model in models:
        for top_p in ("crescent", "vllm", "off"):
            rows.append(child(args, "vllm", model, "answers", top_p))
            load.append(os.getloadavg()[0])
    print(f"\n{args.prompts} GSM8K questions x up to {args.max_tokens} new tokens, answers stage "
          f"sampling, dtype {args.dtype}, load average {min(load):.2f}-{max(load):.2f}, CPU "
          f"flags: {' '.join(cpu_flags())}")
    print(f"{'model':<30}{'top-p':<10}{'generate s':>12}{'tokens':>9}{'tokens/s':>10}")
    for r in rows:
        print(f"{r['model']:<30}{r['top_p']:<10}{r['generate_s']:>12}{r['tokens']:>9}"
              f"{r['tokens_per_s']:>10}")
    speedup = {}
    for model in models:
        rate = {r["top_p"]: r["tokens_per_s"] for r in rows if r["model"] == model}
        speedup[model] = round(rate["crescent"] / rate["vllm"], 2)
        print(f"{model}: crescent's top-p {speedup[model]:.2f}x vLLM's; "
              f"{rate['crescent'] / rate['off']:.2f} of no top-p's rate")
    write_result(args.out.replace(".json", "_top_p.json"),
                 {"prompts": args.prompts, "max_tokens": args.max_tokens, "dtype": args.dtype,
                  "runs": rows, "crescent_over_vllm": speedup,
                  "load_avg_1m": [round(v, 2) for v in load]})


def cpu_flags() -> list[str]:
    """The vector extensions that decide CPU float speed (bfloat16 needs avx512_bf16); every
    benchmark's JSON records them (write_result)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return sorted(set(re.findall(r"\b(avx2|avx512f|avx512_bf16|amx_bf16)\b", text)))


def write_result(out: str, result: dict) -> None:
    """A benchmark's JSON, with the machine and the time it ran (also bench_pipeline.py)."""
    result = {**result, "machine": platform.processor() or platform.machine(),
              "cpu_flags": cpu_flags(),
              "cores": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M")}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
