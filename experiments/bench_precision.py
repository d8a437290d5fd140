"""Benchmark: float32 against bfloat16 on this CPU, one run: engines, stages, scoring, peak.

    python experiments/bench_precision.py [--models NAME ...] [--prompts 32] [--max-tokens 256]
                                          [--target 16] [--docs 100] [--train-steps 6]
                                          [--accuracy 250]
                                          [--out outputs/bench_precision.json]

Per built-in model (default: every one) and dtype, each in its own process:
  engines  the vllm and hf engines on the answers stage's prompt over the first --prompts
           GSM8K test questions (its sampling, up to --max-tokens new tokens; bench_engines.py's
           `measure`): generated tokens/s, start-up apart;
  stages   `crescent stages=[questions,answers]` with questions.target=--target and 2 samples
           per question on vllm: completion tokens / the stage's wall time (start-up included);
  scoring  `crescent stages=[evaluate]` on crescent_gsm8k_gold_bpb, the first --docs gold
           solutions: scored tokens / scoring seconds, and the bits per byte (must agree
           within 1e-3 across dtypes).
  training `crescent stages=[finetune]` (full fine-tuning, batches of 4, --train-steps steps)
           on the first GSM8K train problems with their gold solutions, finetune.precision
           32-true against bf16-mixed (float32 master weights, bfloat16 autocast): trained
           tokens/s and the first and last step's loss.
Accuracy (--accuracy N, 0 skips it): GSM8K 0-shot chain of thought on the first N test
problems by Qwen2.5-Coder-0.5B at each dtype (`crescent stages=[evaluate]` in
outputs/precision_pair/<dtype>: a re-run reuses a finished one), exact match (flexible
extract) paired problem by problem: the difference with a 95% bootstrap over the problems.
Peak: cores x clock x FLOPs per cycle per core: float32 on AVX-512 64 (two FMA units x 16 lanes
x 2), on AVX2 32; bfloat16 on AMX 1024 (one TMUL tile op: 16 x 32 bf16 pairs a cycle, 2 FLOPs
each), on AVX512-BF16 128 (vdpbf16ps: 32 pairs x 2 units), else the float32 figure. Achieved
FLOP/s counts 2 x parameters per generated token (embeddings included: the LM head is a matmul);
the clock is /proc/cpuinfo's "cpu MHz". Decoding a few sequences at a time is bound by memory,
not arithmetic: the fraction says how far from the arithmetic limit the engine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import cpu_flags, write_result
from bench_evaluate import BPB, bits_per_byte, stage

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ("float32", "bfloat16")
ENGINES = ("vllm", "hf")


def peak_flops() -> dict:
    """The CPU's arithmetic peak per dtype (this module's docstring), from its flags and clock."""
    from crescent.infra.precision import cpu_flags as all_flags

    flags = all_flags()
    text = Path("/proc/cpuinfo").read_text()
    mhz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE).group(1))
    cores = os.cpu_count()
    fp32 = 64 if "avx512f" in flags else 32 if "fma" in flags else 8
    bf16 = 1024 if "amx_bf16" in flags else 128 if "avx512_bf16" in flags else fp32
    per_s = cores * mhz * 1e6
    return {"cores": cores, "mhz": mhz, "flops_per_cycle_per_core": {"float32": fp32,
                                                                      "bfloat16": bf16},
            "float32": per_s * fp32, "bfloat16": per_s * bf16}


def meta_model(model: str):
    """The model's architecture on the meta device (no weights): to count its parameters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from crescent.infra.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model))  # converts a built-in model once
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def parameters(model: str) -> int:
    return sum(p.numel() for p in meta_model(model).parameters())


def child(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if out.returncode != 0:
        sys.exit(f"{what} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def engine_row(model: str, engine: str, dtype: str, prompts: int, max_tokens: int) -> dict:
    code = ("import json, sys; sys.path.insert(0, 'experiments'); from bench_engines import "
            f"measure; print('RESULT ' + json.dumps(measure({engine!r}, {prompts}, {max_tokens}, "
            f"{model!r}, {dtype!r}, 'answers')))")
    out = child([sys.executable, "-c", code], f"{model} on {engine} in {dtype}", cwd=ROOT)
    return json.loads(out.split("RESULT ", 1)[1])


def stages_row(model: str, dtype: str, target: int, work: Path) -> dict:
    run = work / f"stages-{model}-{dtype}"
    child([sys.executable, "-m", "crescent", "stages=[questions,answers]", f"model.name={model}",
           f"model.dtype={dtype}", f"questions.target={target}", "answers.samples=2",
           "voting.k=2", "logger=none", "cache_dir=null", f"hydra.run.dir={run}"],
          f"the stages on {model} in {dtype}", cwd=work)
    row = {"model": model, "dtype": dtype}
    for name in ("questions", "answers"):
        stats = json.loads((run / name / "stats.json").read_text())
        tokens = stats["tokens"]["completion"]
        row[name] = {"wall_s": stats["wall_time_s"], "tokens": tokens,
                     "tokens_per_s": round(tokens / stats["wall_time_s"], 1),
                     "dtype_recorded": stats["provenance"]["precision"]["model.dtype"]["resolved"]}
    return row


def scoring_row(model: str, dtype: str, docs: int, work: Path) -> dict:
    from transformers import AutoTokenizer

    from crescent.infra.models import resolve_model

    where = work / f"score-{model}-{dtype}"
    where.mkdir()
    seconds, logged = stage(model, BPB, docs, where, dtype)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    tokens = sum(len(tokenizer(r["arguments"]["gen_args_0"]["arg_0"]
                               + r["arguments"]["gen_args_0"]["arg_1"]).input_ids)
                 for r in logged)
    return {"model": model, "dtype": dtype, "docs": docs, "seconds": round(seconds, 1),
            "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "bits_per_byte": bits_per_byte(logged)}


TRAINING = {"float32": "32-true", "bfloat16": "bf16-mixed"}
COT, EXACT = "crescent_gsm8k_cot_zeroshot", "exact_match,flexible-extract"


def accuracy_pair(docs: int) -> dict:
    from crescent.intervals import bootstrap
    from crescent.report.runs import per_document

    right, seconds = {}, {}
    for dtype in DTYPES:
        run = ROOT / "outputs" / "precision_pair" / dtype
        child([sys.executable, "-m", "crescent", "stages=[evaluate]", "model=qwen_coder_05b",
               f"model.dtype={dtype}", f"eval.tasks=[{COT}]", f"eval.limit={docs}", "logger=none",
               f"hydra.run.dir={run}"], f"GSM8K chain of thought in {dtype}", cwd=ROOT)
        right[dtype] = per_document(run / "evaluate" / "base" / f"samples_{COT}.jsonl", EXACT)
        seconds[dtype] = json.loads((run / "evaluate" / "stats.json").read_text())[
            "score_seconds"].get("base")
    fp32, bf16 = right["float32"], right["bfloat16"]
    low, high = bootstrap("exact_match", bf16, fp32)
    return {"model": "qwen2.5-coder-0.5b-instruct", "task": COT, "metric": EXACT,
            "problems": len(fp32), "float32": sum(fp32) / len(fp32),
            "bfloat16": sum(bf16) / len(bf16), "difference": (sum(bf16) - sum(fp32)) / len(fp32),
            "ci": [low, high], "only_float32_right": sum(a > b for a, b in zip(fp32, bf16)),
            "only_bfloat16_right": sum(b > a for a, b in zip(fp32, bf16)),
            "score_seconds": seconds}


def training_row(model: str, dtype: str, steps: int, work: Path) -> dict:
    from crescent.infra.data import require
    from crescent.infra.io import atomic_write_text, read_jsonl

    data = work / "gsm8k_sft.jsonl"
    if not data.exists():
        rows = islice(read_jsonl(require(None, "gsm8k/train.jsonl")), 4 * steps)
        atomic_write_text(data, "".join(json.dumps({"messages": [
            {"role": "user", "content": r["question"]},
            {"role": "assistant", "content": r["answer"]}]}) + "\n" for r in rows))
    run = work / f"train-{model}-{dtype}"
    child([sys.executable, "-m", "crescent", "stages=[finetune]", f"finetune.input={data}",
           f"model.name={model}", f"finetune.precision={TRAINING[dtype]}",
           f"finetune.max_steps={steps}", "finetune.batch_size=4", "finetune.val_fraction=0",
           "logger=none", "cache_dir=null", f"hydra.run.dir={run}"],
          f"the finetune stage on {model} at {TRAINING[dtype]}", cwd=work)
    stats = json.loads((run / "finetune" / "stats.json").read_text())
    losses = [r["loss"] for r in read_jsonl(run / "finetune" / "metrics.jsonl")]
    return {"model": model, "dtype": dtype, "precision": TRAINING[dtype], "steps": steps,
            "tokens_per_s": stats["tokens_per_s"], "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4)}


def ratio(rows: list[dict], value, **match) -> float | None:
    """bfloat16 / float32 of `value(row)` among the rows that match."""
    pick = {r["dtype"]: value(r) for r in rows if all(r[k] == v for k, v in match.items())}
    return round(pick["bfloat16"] / pick["float32"], 2) if len(pick) == 2 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every built-in")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--target", type=int, default=16)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--accuracy", type=int, default=250, metavar="N")
    parser.add_argument("--out", default="outputs/bench_precision.json")
    args = parser.parse_args()
    from crescent.infra.models import BUILTIN
    from crescent.infra.precision import describe

    models = args.models or list(BUILTIN)
    peak, load = peak_flops(), [os.getloadavg()[0]]
    engines, stages, scoring, training = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            size = parameters(model)
            for dtype in DTYPES:
                for engine in ENGINES:
                    row = engine_row(model, engine, dtype, args.prompts, args.max_tokens)
                    row["peak_fraction"] = round(
                        row["tokens_per_s"] * 2 * size / peak[dtype], 5)
                    engines.append(row)
                    print(json.dumps(row), flush=True)
                    load.append(os.getloadavg()[0])
                stages.append(stages_row(model, dtype, args.target, Path(tmp)))
                scoring.append(scoring_row(model, dtype, args.docs, Path(tmp)))
                training.append(training_row(model, dtype, args.train_steps, Path(tmp)))
                print(json.dumps([stages[-1], scoring[-1], training[-1]]), flush=True)
                load.append(os.getloadavg()[0])

    accuracy = accuracy_pair(args.accuracy) if args.accuracy else None
    print(f"\nCPU flags: {' '.join(cpu_flags())}; load average {min(load):.2f}-{max(load):.2f}; "
          f"model.dtype=auto here: {describe('auto')['resolved']}")
    print(f"peak: {peak['cores']} cores x {peak['mhz']:.0f} MHz x "
          f"{peak['flops_per_cycle_per_core']} FLOPs/cycle = {peak['float32'] / 1e9:.0f} "
          f"GFLOP/s float32, {peak['bfloat16'] / 1e9:.0f} GFLOP/s bfloat16")
    print(f"{'model':<30}{'what':<16}{'fp32 tok/s':>11}{'bf16 tok/s':>11}{'bf16/fp32':>10}")

    def line(model, what, rows, value, **match):
        pick = {r["dtype"]: value(r) for r in rows
                if r["model"] == model and all(r[k] == v for k, v in match.items())}
        print(f"{model:<30}{what:<16}{pick['float32']:>11}{pick['bfloat16']:>11}"
              f"{ratio(rows, value, model=model, **match):>10}")

    for model in models:
        for engine in ENGINES:
            line(model, engine, engines, lambda r: r["tokens_per_s"], engine=engine)
        for name in ("questions", "answers"):
            line(model, f"{name} stage", stages, lambda r, n=name: r[n]["tokens_per_s"])
        line(model, "scoring", scoring, lambda r: r["tokens_per_s"])
        line(model, "training", training, lambda r: r["tokens_per_s"])
        bpb = {r["dtype"]: r["bits_per_byte"] for r in scoring if r["model"] == model}
        print(f"{model:<30}bits per byte   float32 {bpb['float32']:.5f}, bfloat16 "
              f"{bpb['bfloat16']:.5f}, difference {bpb['bfloat16'] - bpb['float32']:+.5f}")
        for r in (r for r in training if r["model"] == model):
            print(f"{model:<30}training loss   {r['precision']}: step 1 {r['first_loss']}, "
                  f"step {r['steps']} {r['last_loss']}")
    if accuracy:
        a = accuracy
        print(f"GSM8K CoT exact match, {a['problems']} problems: float32 {a['float32']:.3f}, "
              f"bfloat16 {a['bfloat16']:.3f}, difference {a['difference']:+.3f} "
              f"[{a['ci'][0]:+.3f}, {a['ci'][1]:+.3f}] (paired bootstrap); right in one only: "
              f"float32 {a['only_float32_right']}, bfloat16 {a['only_bfloat16_right']}")
    write_result(args.out, {
        "prompts": args.prompts, "max_tokens": args.max_tokens, "target": args.target,
        "docs": args.docs, "train_steps": args.train_steps, "engines": engines, "stages": stages,
        "scoring": scoring, "training": training, "accuracy": accuracy,
        "peak": peak, "auto": describe("auto"), "load_avg_1m": [round(v, 2) for v in load]})


if __name__ == "__main__":
    main()
