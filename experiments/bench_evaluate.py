"""Benchmark: the evaluate stage's scoring against the compute floor and raw vLLM, one run.

    python experiments/bench_evaluate.py [--models NAME ...] [--docs 200] [--cot-docs 20]
                                         [--out outputs/bench_evaluate.json]

Per model (default: every built-in one), on the same documents:
  (b) the evaluate stage as users run it (`crescent stages=[evaluate]`, one label, its child
      process and start-up included) on `crescent_gsm8k_gold_bpb`, the first --docs GSM8K test
      gold solutions;
  (a) the floor: the same (context, continuation) pairs the stage logged, scored by a plain
      batched forward pass in transformers (float32, length-sorted batches of 16, right
      padding and no attention mask, the LM head and log-softmax at the continuation
      positions only), model load included;
  (d) the same task and documents through lm-eval's vllm type (vLLM's prompt log-probs: the
      stage's path on CPU before it handed text scoring to a forward pass, crescent-hf), child
      process and start-up included as in (b);
  (c) `crescent_gsm8k_cot_zeroshot` on the first --cot-docs problems: the stage against raw
      vLLM (`vllm.LLM.generate`) on the prompts the stage logged, with its sampling (greedy,
      its stop strings and token limit), start-up included in both.
tokens/s: (a, b) the tokens of context + continuation, counted by the model's tokenizer;
(c) the generated tokens. `*_ratio` = stage / reference tokens/s. The bits per byte of (a)
and (b) are printed side by side: they must agree. Writes JSON with the load average and the
CPU flags.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import cpu_flags, write_result

ROOT = Path(__file__).resolve().parent.parent
BPB, COT = "crescent_gsm8k_gold_bpb", "crescent_gsm8k_cot_zeroshot"


def stage(model: str, task: str, docs: int, work: Path,
          dtype: str = "float32") -> tuple[float, list[dict]]:
    """The evaluate stage on the base model alone: its scoring seconds and lm-eval's log
    (in `<work>/<task>/evaluate/base`)."""
    run = work / f"{task}"
    cmd = [sys.executable, "-m", "crescent", "stages=[evaluate]", f"model.name={model}",
           f"model.dtype={dtype}", f"eval.tasks=[{task}]", f"eval.limit={docs}", "logger=none",
           "cache_dir=null", f"hydra.run.dir={run}"]
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    if out.returncode != 0:
        sys.exit(f"the evaluate stage failed on {model}:\n{out.stderr[-3000:]}")
    stats = json.loads((run / "evaluate" / "stats.json").read_text())
    seconds = stats["score_seconds"]["base"]
    log = run / "evaluate" / "base" / f"samples_{task}.jsonl"
    return seconds, [json.loads(line) for line in log.read_text().splitlines()]


def vllm_likelihood(label_dir: Path) -> tuple[float, list[dict]]:
    """(d): the stage's spec in `label_dir` re-run with lm-eval's vllm type for every task."""
    from crescent.config import EngineConfig
    from crescent.engines.vllm_offline import VLLMEngine
    from crescent.infra.io import read_json, write_json
    from crescent.methods.scoring import run_of
    from crescent.stages import evaluate

    spec = read_json(label_dir / evaluate.SPEC)
    pretrained = spec["runs"][0]["model_args"]["pretrained"]
    vllm = VLLMEngine.lm_eval_model(EngineConfig(), pretrained, "float32")
    out = label_dir.parent / "vllm"
    spec["runs"] = [run_of(vllm, spec["tasks"])]
    spec["out_dir"] = str(out)
    write_json(out / evaluate.SPEC, spec)
    started = time.perf_counter()
    evaluate._score_in_subprocess("vllm", out)
    seconds = time.perf_counter() - started
    log = out / f"samples_{spec['tasks'][0]}.jsonl"
    return seconds, [json.loads(line) for line in log.read_text().splitlines()]


def bits_per_byte(logged: list[dict]) -> float:
    """The corpus bits per byte of lm-eval's per-document (log-likelihood, bytes) log."""
    from crescent.intervals import aggregate

    return aggregate("bits_per_byte", [r["bits_per_byte"] for r in logged])


def floor(path: str, pairs: list[tuple[str, str]], batch: int = 16) -> dict:
    """Bits per byte of each continuation given its context: one forward pass per batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    encoded = []
    for context, continuation in pairs:
        n_bytes = len(continuation.encode("utf-8"))  # the metric divides by the target's bytes
        # As lm-eval's _encode_pair does: the context's trailing whitespace (the chat template's
        # "\n" after the assistant header) is scored as part of the continuation, the whole
        # string encoded and the context's tokens split off.
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
        n_context = len(tokenizer(context, add_special_tokens=False).input_ids)
        encoded.append((whole, n_context, n_bytes))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    logprob = [0.0] * len(encoded)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            rows = [encoded[i] for i in order[start:start + batch]]
            width = max(len(ids) for ids, _, _ in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            for j, (tokens, _, _) in enumerate(rows):
                ids[j, :len(tokens)] = torch.tensor(tokens)
            # Right padding: a causal model's real positions never see it, so no mask.
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
            for j, (tokens, n_context, _) in enumerate(rows):
                # Only the continuation's positions go through the LM head.
                positions = torch.arange(n_context - 1, len(tokens) - 1)
                logits = model.lm_head(hidden[j, positions]).float()
                targets = torch.tensor(tokens[n_context:])
                logprob[order[start + j]] = float(
                    torch.log_softmax(logits, -1).gather(1, targets[:, None]).sum())
    seconds = time.perf_counter() - started
    total_bytes = sum(b for _, _, b in encoded)
    return {"seconds": round(seconds, 1), "tokens": sum(len(ids) for ids, _, _ in encoded),
            "bits_per_byte": -sum(logprob) / total_bytes / math.log(2)}


def raw_vllm(path: str, rows: list[dict]) -> dict:
    """The stage's chain-of-thought prompts through vllm.LLM.generate, as the engine starts it."""
    from crescent.config import EngineConfig
    from crescent.engines.vllm_offline import CPU_EXECUTOR, cpu_environment, on_cpu
    from crescent.options import VLLMOptions

    engine = EngineConfig()
    if on_cpu():
        for key, value in cpu_environment(engine).items():
            os.environ.setdefault(key, value)
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(path, dtype="float32", max_model_len=engine.max_model_len,
              enforce_eager=VLLMOptions().enforce_eager, seed=0,
              **({"distributed_executor_backend": CPU_EXECUTOR} if on_cpu() else {}))
    prompts = [r["arguments"]["gen_args_0"]["arg_0"] for r in rows]
    kwargs = rows[0]["arguments"]["gen_args_0"]["arg_1"]
    params = SamplingParams(temperature=0, max_tokens=kwargs.get("max_gen_toks", 256),
                            stop=list(kwargs.get("until", [])))
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1),
            "tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}


def measure(model: str, docs: int, cot_docs: int) -> dict:
    from transformers import AutoTokenizer

    from crescent.infra.models import resolve_model

    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with tempfile.TemporaryDirectory() as tmp:
        stage_s, logged = stage(model, BPB, docs, Path(tmp))
        pairs = [(r["arguments"]["gen_args_0"]["arg_0"], r["arguments"]["gen_args_0"]["arg_1"])
                 for r in logged]
        base = floor(path, pairs)
        vllm_s, vllm_logged = vllm_likelihood(Path(tmp) / BPB / "evaluate" / "base")
        cot_s, cot_logged = stage(model, COT, cot_docs, Path(tmp))
    cot_tokens = sum(len(tokenizer(r["resps"][0][0], add_special_tokens=False).input_ids)
                     for r in cot_logged)
    raw = subprocess.run([sys.executable, __file__, "--raw-vllm", path],
                         input=json.dumps(cot_logged), capture_output=True, text=True, check=False)
    if raw.returncode != 0:
        sys.exit(f"raw vLLM failed on {model}:\n{raw.stderr[-3000:]}")
    raw = json.loads(raw.stdout.split("RESULT ", 1)[1])
    bpb_stage_tps, bpb_floor_tps = base["tokens"] / stage_s, base["tokens"] / base["seconds"]
    bpb_vllm_tps = base["tokens"] / vllm_s
    cot_stage_tps, cot_raw_tps = cot_tokens / cot_s, raw["tokens"] / raw["seconds"]
    return {
        "model": model, "docs": docs, "cot_docs": cot_docs,
        "bpb": {"stage_s": stage_s, "floor_s": base["seconds"], "tokens": base["tokens"],
                "stage_tokens_per_s": round(bpb_stage_tps, 1),
                "floor_tokens_per_s": round(bpb_floor_tps, 1),
                "vllm_s": round(vllm_s, 2), "vllm_tokens_per_s": round(bpb_vllm_tps, 1),
                "stage_bits_per_byte": bits_per_byte(logged),
                "floor_bits_per_byte": base["bits_per_byte"],
                "vllm_bits_per_byte": bits_per_byte(vllm_logged)},
        "bpb_ratio": round(bpb_stage_tps / bpb_floor_tps, 3),
        "bpb_vllm_ratio": round(bpb_vllm_tps / bpb_floor_tps, 3),  # (d) / (a): the path before
        "cot": {"stage_s": cot_s, "raw_s": raw["seconds"], "stage_tokens": cot_tokens,
                "raw_tokens": raw["tokens"], "stage_tokens_per_s": round(cot_stage_tps, 1),
                "raw_tokens_per_s": round(cot_raw_tps, 1)},
        "cot_ratio": round(cot_stage_tps / cot_raw_tps, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every built-in")
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--cot-docs", type=int, default=20)
    parser.add_argument("--out", default="outputs/bench_evaluate.json")
    parser.add_argument("--raw-vllm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_vllm:  # a child: vLLM holds its memory until the process ends
        print("RESULT " + json.dumps(raw_vllm(args.raw_vllm, json.loads(sys.stdin.read()))))
        return
    from crescent.infra.models import BUILTIN

    load, rows = [os.getloadavg()[0]], []
    for model in args.models or list(BUILTIN):
        rows.append(measure(model, args.docs, args.cot_docs))
        load.append(os.getloadavg()[0])
    print(f"\nload average {min(load):.2f}-{max(load):.2f}, CPU flags: {' '.join(cpu_flags())}")
    print(f"{'model':<30}{'task':<10}{'stage tok/s':>12}{'reference':>11}{'ratio':>7}"
          f"{'stage bpb':>11}{'ref bpb':>11}")
    for r in rows:
        b, c = r["bpb"], r["cot"]
        print(f"{r['model']:<30}{'bpb':<10}{b['stage_tokens_per_s']:>12}"
              f"{b['floor_tokens_per_s']:>11}{r['bpb_ratio']:>7}"
              f"{b['stage_bits_per_byte']:>11.5f}{b['floor_bits_per_byte']:>11.5f}")
        print(f"{r['model']:<30}{'bpb vllm':<10}{b['vllm_tokens_per_s']:>12}"
              f"{b['floor_tokens_per_s']:>11}{r['bpb_vllm_ratio']:>7}"
              f"{b['vllm_bits_per_byte']:>11.5f}{b['floor_bits_per_byte']:>11.5f}")
        print(f"{r['model']:<30}{'cot':<10}{c['stage_tokens_per_s']:>12}"
              f"{c['raw_tokens_per_s']:>11}{r['cot_ratio']:>7}")
    write_result(args.out, {"models": rows, "load_avg_1m": [round(v, 2) for v in load]})


if __name__ == "__main__":
    main()
