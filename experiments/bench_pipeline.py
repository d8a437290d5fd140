"""Benchmark: the questions stage against raw vLLM on the same workload, one run, one engine.

    python experiments/bench_pipeline.py [--prompts 128] [--max-tokens 128] [--repeat]
                                         [--out outputs/bench_pipeline.json]

One vllm engine is started (the stage gets the same one through `make_engine`'s sharing, as in
a `crescent` run), then, back to back: raw `LLM.chat` once over `prompts` copies of the math
bait prompt, each request with its own seed, sampled as the stage samples (temperature 1,
top_p 0.95, up to `max-tokens`); the questions stage with `questions.max_candidates` =
`questions.target` = `engine.batch_size` = `prompts`, so it generates as many candidates with
the same sampling and embeds and decides them as they come; with `--repeat` the stage again
with the same seed (are the questions the same?); raw again. The stage's rate is over its
generate-and-decide loop (`loop_wall_s` in its stats.json) and is compared with the mean of the
two raw rates, which bracket it in time. tokens/s counts generated tokens. The answers stage
row is a TODO (that stage is being restructured). Other jobs share this machine: the 1-minute
load average is recorded beside every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def load() -> float:
    return round(os.getloadavg()[0], 2)


def stage_config(prompts: int, max_tokens: int):
    from hydra import compose, initialize_config_dir

    from crescent.__main__ import CONF_DIR

    overrides = ["stages=[questions]", f"questions.target={prompts}",
                 f"questions.max_candidates={prompts}", f"engine.batch_size={prompts}",
                 f"questions.sampling.max_tokens={max_tokens}", "engine=vllm", "seed=0",
                 "logger=none", "cache_dir=null"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def raw_vllm(engine, prompts: int, max_tokens: int, what: str) -> dict:
    from bench_engines import bench_conversations, stage_sampling  # beside this script

    before, started = load(), time.perf_counter()
    generations = engine.chat(bench_conversations(prompts), stage_sampling(max_tokens), n=1,
                              seed=0)
    gen_s = time.perf_counter() - started
    tokens = sum(g.total_tokens for g in generations)
    return {"what": what, "generate_s": round(gen_s, 1), "tokens": tokens,
            "tokens_per_s": round(tokens / gen_s, 1), "load_before": before,
            "load_after": load()}


def questions_stage(cfg, run_dir: Path, what: str) -> dict:
    from crescent.stages import questions

    (run_dir / "questions").mkdir(parents=True)
    before = load()
    questions.run(cfg, run_dir)
    stats = json.loads((run_dir / "questions" / "stats.json").read_text())
    tokens = stats["tokens"]["completion"]
    return {"what": what, "generate_s": stats["loop_wall_s"], "tokens": tokens,
            "tokens_per_s": round(tokens / stats["loop_wall_s"], 1),
            "candidates": stats["candidates"], "accepted": stats["accepted"],
            "rewrites": stats["rewrites_generated"], "decide_s": stats["decide_wall_s"],
            "load_before": before, "load_after": load()}


def same_outputs(a: Path, b: Path) -> dict:
    """Whether two runs wrote the same questions (and rejections), and how many lines match."""
    result = {}
    for name in ("questions.jsonl", "rejected.jsonl"):
        x = (a / "questions" / name).read_text().splitlines()
        y = (b / "questions" / name).read_text().splitlines()
        result[name] = {"identical": x == y, "lines": [len(x), len(y)],
                        "equal_prefix": next((i for i, (p, q) in enumerate(zip(x, y)) if p != q),
                                             min(len(x), len(y)))}
    return result


def measure(args, tmp: Path) -> tuple[float, list[dict], dict | None]:
    from crescent.infra.engines import make_engine, sharing

    cfg = stage_config(args.prompts, args.max_tokens)
    with sharing():
        started = time.perf_counter()
        engine = make_engine(cfg.engine, cfg.model)
        start_s = time.perf_counter() - started
        rows = [raw_vllm(engine, args.prompts, args.max_tokens, "raw vLLM (LLM.chat)"),
                questions_stage(cfg, tmp / "a", "questions stage")]
        repeat = None
        if args.repeat:
            rows.append(questions_stage(cfg, tmp / "b", "questions stage, same seed again"))
            repeat = same_outputs(tmp / "a", tmp / "b")
        rows.append(raw_vllm(engine, args.prompts, args.max_tokens, "raw vLLM again"))
    return start_s, rows, repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeat", action="store_true", help="a second same-seed stage run")
    parser.add_argument("--out", default="outputs/bench_pipeline.json")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))

    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        start_s, rows, repeat = measure(args, Path(tmp))
    raws = [r for r in rows if r["what"].startswith("raw")]
    raw_rate = sum(r["tokens_per_s"] for r in raws) / len(raws)
    for r in rows:
        r["ratio"] = round(r["tokens_per_s"] / raw_rate, 2)
    rows.append({"what": "answers stage", "todo": "being restructured (sampling once, "
                 "re-voting from cached samples); compare it the same way once it lands"})

    print(f"\n{args.prompts} bait requests x up to {args.max_tokens} new tokens, top_p 0.95, "
          f"embedded model, one vllm engine (start {start_s:.1f} s)")
    print(f"{'':<34}{'gen s':>8}{'tokens':>8}{'tok/s':>8}{'ratio':>7}   load")
    for r in rows:
        if "todo" in r:
            print(f"{r['what']:<34}TODO: {r['todo']}")
            continue
        print(f"{r['what']:<34}{r['generate_s']:>8}{r['tokens']:>8}{r['tokens_per_s']:>8}"
              f"{r['ratio']:>7}   {r['load_before']}-{r['load_after']}")
    print(f"ratio: tokens/s over the mean of the two raw runs ({raw_rate:.1f})")
    if repeat is not None:
        print(f"same seed twice: {json.dumps(repeat)}")
    result = {"prompts": args.prompts, "max_tokens": args.max_tokens, "start_s": round(start_s, 1),
              "rows": rows, "raw_tokens_per_s_mean": round(raw_rate, 1),
              "same_seed_repeat": repeat, "when": time.strftime("%Y-%m-%d %H:%M")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
