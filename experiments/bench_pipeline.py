"""Benchmark: the questions and answers stages against raw vLLM on the same requests, one run.

    python experiments/bench_pipeline.py [--candidates 256] [--questions 64] [--max-tokens 128]
        [--out outputs/bench_pipeline.json]

One process, one vLLM engine of the embedded model (the stages take the one already open),
in this order after a short warm-up:
  1. the questions stage: `--candidates` candidates (target = max_candidates, so none is cut
     short), MiniLM dedup, rewrites, `engine.batch_size` in flight; every request it makes
     (conversation and seed) is recorded;
  2. raw vLLM: one `LLM.chat` call over exactly those requests;
  3. the answers stage on the first `--questions` accepted questions (voting.k samples each),
     its requests recorded;
  4. raw vLLM: one `LLM.chat` call over exactly those.
Tokens/s counts generated tokens over each one's whole wall time (a stage's includes cleaning,
embedding, deciding, decontamination and writing its files). The ratios compare runs made
minutes apart on the same machine; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def compose(args, run_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from crescent.__main__ import CONF_DIR

    overrides = [
        "logger=none", "cache_dir=null", f"engine.batch_size={args.batch_size}",
        f"questions.target={args.candidates}", f"questions.max_candidates={args.candidates}",
        f"questions.sampling.max_tokens={args.max_tokens}",
        f"answers.sampling.max_tokens={args.max_tokens}", f"voting.k={args.k}",
        f"answers.input={run_dir / 'answer_these.jsonl'}",
    ] + ([f"eval.data_dir={args.data}"] if args.data else [])
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


class Recorder:
    """Passes the engine's session through, keeping every request a stage submits."""

    def __init__(self, engine):
        self.engine, self.requests = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def session(self, sampling, n):
        session, requests = self.engine.session(sampling, n), self.requests

        class Recording:
            in_flight = property(lambda _: session.in_flight)
            poll, close = session.poll, session.close

            def submit(self, index, request):
                requests.append(request)
                session.submit(index, request)

        return Recording()


def raw_vllm(engine, requests, sampling, n: int) -> dict:
    """One LLM.chat call over the given requests, each with its own seed."""
    from crescent.engines.vllm_offline import sampling_params

    params = [sampling_params(sampling, n, r.seed) for r in requests]
    started = time.perf_counter()
    outputs = engine.llm.chat([r.input for r in requests], params, use_tqdm=False)
    wall = time.perf_counter() - started
    tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    return _row(f"raw vLLM ({len(requests)} requests x {n})", tokens, wall)


def stage(name: str, module, cfg, run_dir: Path, recorder: Recorder) -> dict:
    from crescent import engines
    from crescent.infra.io import read_json

    recorder.requests.clear()
    opened = engines.make_engine
    engines.make_engine = lambda *a: recorder  # the stage's one engine, recorded
    try:
        started = time.perf_counter()
        out = module.run(cfg, run_dir)
        wall = time.perf_counter() - started
    finally:
        engines.make_engine = opened
    tokens = read_json(out / "stats.json")["tokens"]["completion"]
    return _row(f"{name} stage ({len(recorder.requests)} requests)", tokens, wall)


def _row(what: str, tokens: int, wall: float) -> dict:
    return {"what": what, "tokens": tokens, "wall_s": round(wall, 1),
            "tokens_per_s": round(tokens / wall, 1), "load_avg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--k", type=int, default=4, help="samples per question (voting.k)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256, help="engine.batch_size")
    parser.add_argument("--data", help="benchmark data dir (default: the stages' own lookup)")
    parser.add_argument("--out", default="outputs/bench_pipeline.json")
    args = parser.parse_args()

    from bench_engines import write_result  # beside this script

    from crescent.engines import make_engine
    from crescent.infra import logs
    from crescent.infra.io import read_jsonl
    from crescent.stages import answers, questions

    logs.setup()  # the stages' bars and this table, not vLLM's start-up log

    run_dir = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    cfg = compose(args, run_dir)
    load_before = os.getloadavg()
    started = time.perf_counter()
    recorder = Recorder(make_engine(cfg.engine, cfg.model))
    start_s = time.perf_counter() - started
    warm = [[{"role": "user", "content": "Say hello."}]] * 8
    recorder.engine.chat(warm, cfg.questions.sampling, n=1, seed=0)

    rows = [stage("questions", questions, cfg, run_dir, recorder)]
    rows.append(raw_vllm(recorder.engine, recorder.requests, cfg.questions.sampling, 1))
    accepted = list(read_jsonl(run_dir / "questions" / "questions.jsonl"))[: args.questions]
    (run_dir / "answer_these.jsonl").write_text(
        "".join(json.dumps({"id": q["id"], "question": q["question"]}) + "\n" for q in accepted))
    rows.append(stage("answers", answers, cfg, run_dir, recorder))
    rows.append(raw_vllm(recorder.engine, recorder.requests, cfg.answers.sampling, args.k))

    ratios = {"questions": round(rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"], 3),
              "answers": round(rows[2]["tokens_per_s"] / rows[3]["tokens_per_s"], 3)}
    print(f"\nembedded model, vLLM, engine.batch_size={args.batch_size}, "
          f"up to {args.max_tokens} new tokens, engine start {start_s:.0f} s; "
          f"load average before {load_before[0]:.2f} {load_before[1]:.2f}")
    print(f"{'run':<40}{'tokens':>8}{'wall s':>9}{'tokens/s':>10}{'load 1m':>9}")
    for r in rows:
        print(f"{r['what']:<40}{r['tokens']:>8}{r['wall_s']:>9}{r['tokens_per_s']:>10}"
              f"{r['load_avg_1m']:>9}")
    print(f"questions stage / raw vLLM: {ratios['questions']:.3f}   "
          f"answers stage / raw vLLM: {ratios['answers']:.3f}")

    write_result(args.out, {
        "rows": rows, "ratios": ratios, "engine_start_s": round(start_s, 1),
        "settings": vars(args), "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()]})


if __name__ == "__main__":
    main()
