"""Benchmark: training tokens/s and peak memory of the finetune stage's Lightning loop vs TRL's
SFTTrainer, same model, data, batches and schedule, one run.

    python experiments/bench_finetune.py [--examples 64] [--steps 12] [--batch-size 4]
        [--max-length 256] [--rounds 1] [--gradient-checkpointing both] [--threads 0]
        [--out outputs/bench_finetune.json]

Data: the first `--examples` GSM8K train problems (../shared/data) as chat SFT pairs, tokenised
once with the stage's own `encode_conversation` (chat template, assistant-only labels); TRL
gets exactly those token ids with the assistant mask as `completion_mask`. Both train the
embedded SmolLM2-135M-Instruct in float32 (full fine-tuning), in the data's order (no
shuffling), the same batches, AdamW (fused), lr 1e-5 with 2 warm-up steps and cosine decay,
gradient clipping at 1.0, no checkpoints, no validation: the per-step losses of the two loops
should then agree up to floating-point noise. Gradient checkpointing (TRL's default, off in the
stage) is set the same in both: off, on, or each in turn (`both`, the default).

Each run is its own subprocess; peak memory is the process's peak RSS up to the end of the
training loop (model load included, the stage's final save not). The two loops alternate for
`--rounds` rounds so that other load on the machine hits both alike. tokens/s counts the real
(non-padding) tokens of the batches trained, over the wall time of the training loop (from
the loop's train-start hook to its train-end hook: model loading and tokenisation excluded).
Needs `pip install --no-deps trl==1.16.0` (the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
LR, WARMUP = 1e-5, 2


def write_sft(path: Path, n: int) -> None:
    with GSM8K.open() as f, path.open("w") as out:
        for _, line in zip(range(n), f):
            row = json.loads(line)
            out.write(json.dumps({"messages": [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": row["answer"]}]}) + "\n")


def run_ours(sft: Path, work: Path, args) -> dict:
    from hydra import compose, initialize_config_dir

    from crescent.__main__ import CONF_DIR
    from crescent.infra.io import read_json, read_jsonl
    from crescent.stages.finetune import run

    overrides = [
        "stages=[finetune]", f"finetune.input={sft}", "logger=none", "seed=0",
        f"finetune.max_steps={args.steps}", f"finetune.batch_size={args.batch_size}",
        f"finetune.max_length={args.max_length}", f"finetune.lr={LR}",
        f"finetune.warmup_steps={WARMUP}", "finetune.scheduler=cosine",
        "finetune.val_fraction=0", "finetune.shuffle=false", "finetune.checkpoint_every_n_steps=0",
        "finetune.progress_bar=false", "finetune.log_every_n_steps=1", "finetune.precision=32-true",
        "finetune.gradient_clip_val=1.0", "finetune.weight_decay=0.0", "finetune.accelerator=cpu",
        f"finetune.gradient_checkpointing={args.gc == 'on'}",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    out = run(cfg, work)
    stats = read_json(out / "stats.json")
    rows = list(read_jsonl(out / "metrics.jsonl"))
    return {"tokens": stats["tokens"], "train_s": stats["train_time_s"],
            "peak_rss_mib": stats["peak_rss_mib"],
            "losses": [r["loss"] for r in rows], "step_s": [r["seconds"] for r in rows],
            "step_tokens": [r["tokens"] for r in rows]}


def run_trl(sft: Path, work: Path, args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from crescent.infra.models import resolve_model
    from crescent.methods.sft_data import IGNORE_INDEX, encode_conversation, load_conversations

    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = [encode_conversation(tokenizer, c, args.max_length) for c in load_conversations(sft)]
    examples = [e for e in examples if e is not None]
    data = Dataset.from_dict({
        "input_ids": [e["input_ids"] for e in examples],
        "completion_mask": [[int(x != IGNORE_INDEX) for x in e["labels"]] for e in examples]})
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, *a, **kw):
            self.start = time.perf_counter()
            self.marks = [self.start]

        def on_step_end(self, *a, **kw):
            self.marks.append(time.perf_counter())

        def on_train_end(self, *a, **kw):
            self.end = time.perf_counter()
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    clock = Clock()
    config = SFTConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=LR,
        lr_scheduler_type="cosine", warmup_steps=WARMUP, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        train_sampling_strategy="sequential", max_length=args.max_length, packing=False,
        completion_only_loss=True, use_cpu=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, seed=0, bf16=False, fp16=False, disable_tqdm=True,
        gradient_checkpointing=args.gc == "on")
    trainer = SFTTrainer(model=model, args=config, train_dataset=data,
                         processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    lengths = [len(e["input_ids"]) for e in examples]
    batches = [sum(lengths[i : i + args.batch_size]) for i in range(0, len(lengths),
                                                                    args.batch_size)]
    step_tokens = [batches[s % len(batches)] for s in range(args.steps)]  # sequential order
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens": sum(step_tokens), "train_s": round(clock.end - clock.start, 2),
            "peak_rss_mib": round(clock.peak, 1),
            "losses": losses, "step_tokens": step_tokens,
            "step_s": [b - a for a, b in zip(clock.marks, clock.marks[1:])]}


def child(loop: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sft = work / "sft.jsonl"
        write_sft(sft, args.examples)
        result = (run_ours if loop == "ours" else run_trl)(sft, work, args)
    import torch

    result["loop"] = loop
    result["torch_threads"] = torch.get_num_threads()
    result["tokens_per_s"] = round(result["tokens"] / result["train_s"], 1)
    steady_tokens = sum(result["step_tokens"][1:])
    result["tokens_per_s_after_step1"] = round(steady_tokens / sum(result["step_s"][1:]), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", choices=["off", "on", "both"], default="both",
                        help="both loops with it off, on, or each in turn (TRL's default is on)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in each run (OMP_NUM_THREADS); 0: torch's default")
    parser.add_argument("--out", default="outputs/bench_finetune.json")
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--gc", choices=["off", "on"], default="off", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)))
        return

    settings = ["off", "on"] if args.gradient_checkpointing == "both" \
        else [args.gradient_checkpointing]
    runs = []
    for r in range(args.rounds):
        for gc in settings:
            for loop in ("ours", "trl"):
                cmd = [sys.executable, __file__, "--child", loop, "--gc", gc,
                       "--examples", str(args.examples), "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
                env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
                if args.threads:
                    env["OMP_NUM_THREADS"] = str(args.threads)
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode != 0:
                    sys.exit(f"{loop} failed:\n{out.stderr[-3000:]}")
                run = json.loads(out.stdout.split("RESULT ", 1)[1])
                run.update(round=r, gradient_checkpointing=gc)
                runs.append(run)
                print(f"round {r}, gradient checkpointing {gc}, {loop}: {run['tokens_per_s']} "
                      f"tokens/s, {run['peak_rss_mib']} MiB", flush=True)

    def summary(loop: str, gc: str) -> dict:
        mine = [r for r in runs if r["loop"] == loop and r["gradient_checkpointing"] == gc]
        return {"tokens_per_s_mean": round(statistics.mean(r["tokens_per_s"] for r in mine), 1),
                "tokens_per_s_after_step1_mean": round(statistics.mean(
                    r["tokens_per_s_after_step1"] for r in mine), 1),
                "peak_rss_mib_max": max(r["peak_rss_mib"] for r in mine),
                "tokens": mine[0]["tokens"], "losses": mine[0]["losses"]}

    print(f"\nSmolLM2-135M full fine-tuning, float32, {args.steps} steps x batch "
          f"{args.batch_size}, max_length {args.max_length}, {args.rounds} round(s), "
          f"{runs[0]['torch_threads']} torch threads")
    print(f"{'grad ckpt':<10}{'loop':<6}{'tokens':>8}{'tokens/s':>10}{'after step 1':>14}"
          f"{'peak RSS MiB':>14}")
    results = {}
    for gc in settings:
        ours, trl = summary("ours", gc), summary("trl", gc)
        for name, s in (("ours", ours), ("trl", trl)):
            print(f"{gc:<10}{name:<6}{s['tokens']:>8}{s['tokens_per_s_mean']:>10}"
                  f"{s['tokens_per_s_after_step1_mean']:>14}{s['peak_rss_mib_max']:>14}")
        diffs = [abs(a - b) for a, b in zip(ours["losses"], trl["losses"])]
        results[f"gradient_checkpointing_{gc}"] = {
            "ours": ours, "trl": trl,
            "ours_over_trl_tokens_per_s": round(
                ours["tokens_per_s_mean"] / trl["tokens_per_s_mean"], 3),
            "ours_over_trl_after_step1": round(
                ours["tokens_per_s_after_step1_mean"] / trl["tokens_per_s_after_step1_mean"], 3),
            "ours_over_trl_peak_rss": round(ours["peak_rss_mib_max"] / trl["peak_rss_mib_max"], 3),
            "max_abs_loss_diff": round(max(diffs), 5)}
    for gc in settings:
        res = results[f"gradient_checkpointing_{gc}"]
        print(f"gradient checkpointing {gc}: ours/trl tokens/s "
              f"{res['ours_over_trl_tokens_per_s']:.3f} (after step 1: "
              f"{res['ours_over_trl_after_step1']:.3f}), peak RSS "
              f"{res['ours_over_trl_peak_rss']:.3f}, max |loss difference| "
              f"{res['max_abs_loss_diff']:.5f}")
    first = results[f"gradient_checkpointing_{settings[0]}"]
    print(f"step  ours loss  trl loss   (gradient checkpointing {settings[0]})")
    for i, (a, b) in enumerate(zip(first["ours"]["losses"], first["trl"]["losses"]), 1):
        print(f"{i:>4}  {a:>9.4f}  {b:>8.4f}")

    import trl as trl_pkg

    result = {"examples": args.examples, "steps": args.steps, "batch_size": args.batch_size,
              "max_length": args.max_length, "rounds": args.rounds,
              "torch_threads": runs[0]["torch_threads"], **results, "runs": runs,
              "trl_version": trl_pkg.__version__,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "when": time.strftime("%Y-%m-%d %H:%M")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
