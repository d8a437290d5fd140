"""Benchmark: training speed of the dpo objective against sft on the same examples, one run.

    python experiments/bench_dpo.py [--examples 32] [--steps 8] [--batch-size 4]
        [--rounds 1] [--out outputs/bench_dpo.json]

Data: the first `--examples` GSM8K train problems (../shared/data). SFT trains on (question,
gold solution); DPO on the same questions with the gold solution chosen and the same solution
with its final answer off by one rejected, so a DPO step reads twice the tokens of an SFT step
on the same questions. Both run the finetune stage as users run it (`python -m crescent
stages=[finetune]`, each its own process, float32, full fine-tuning of the embedded
SmolLM2-135M-Instruct, the same steps and batch size, no validation, no checkpoints), and
alternate for `--rounds` rounds so other load hits both alike. From each run's stats.json:
tokens/s (real tokens of the batches over the training loop's wall time; DPO's count chosen and
rejected) and examples/s (questions per second); DPO's reference pass, done once before
training, is timed apart. Prints a table and writes JSON with the ratios, the load average and
the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import cpu_flags, write_result

ROOT = Path(__file__).resolve().parent.parent


def write_data(work: Path, n: int) -> tuple[Path, Path]:
    from crescent.infra.data import require

    sft, prefs = work / "sft.jsonl", work / "prefs.jsonl"
    with require(None, "gsm8k/train.jsonl").open() as f, sft.open("w") as s, prefs.open("w") as p:
        for i, line in zip(range(n), f):
            row = json.loads(line)
            gold = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
            wrong = row["answer"].rsplit("####", 1)[0] + f"#### {int(float(gold)) + 1}"
            user = [{"role": "user", "content": row["question"]}]
            s.write(json.dumps({"messages": user + [
                {"role": "assistant", "content": row["answer"]}]}) + "\n")
            p.write(json.dumps({"id": i, "prompt": user,
                                "chosen": [{"role": "assistant", "content": row["answer"]}],
                                "rejected": [{"role": "assistant", "content": wrong}]}) + "\n")
    return sft, prefs


def run(objective: str, data: Path, work: Path, args) -> dict:
    out = work / f"{objective}-{time.time_ns()}"
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "crescent", "stages=[finetune]", f"finetune.input={data}",
         f"finetune.objective={objective}", f"finetune.max_steps={args.steps}",
         f"finetune.batch_size={args.batch_size}", "finetune.val_fraction=0",
         "finetune.checkpoint_every_n_steps=0", "finetune.progress_bar=false",
         "finetune.max_length=512", "logger=none", "cache_dir=null", f"hydra.run.dir={out}"],
        cwd=work, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False)
    if proc.returncode != 0:
        sys.exit(f"bench_dpo: the {objective} run failed:\n{proc.stderr[-3000:]}")
    stats = json.loads((out / "finetune" / "stats.json").read_text())
    return {"objective": objective, "tokens_per_s": stats["tokens_per_s"],
            "examples_per_s": round(args.steps * args.batch_size / stats["train_time_s"], 3),
            "train_time_s": stats["train_time_s"], "tokens": stats["tokens"],
            # the rest of the stage's wall time: loading, DPO's reference pass, saving
            "outside_training_s": round(stats["wall_time_s"] - stats["train_time_s"], 1),
            "stage_wall_s": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="outputs/bench_dpo.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sft, prefs = write_data(work, args.examples)
        rows = [run(objective, data, work, args) for _ in range(args.rounds)
                for objective, data in (("sft", sft), ("dpo", prefs))]
    mean = {o: {k: sum(r[k] for r in rows if r["objective"] == o) / args.rounds
                for k in ("tokens_per_s", "examples_per_s", "outside_training_s")}
            for o in ("sft", "dpo")}
    print(f"{'objective':<10}{'tokens/s':>10}{'examples/s':>12}{'outside training s':>20}")
    for o in ("sft", "dpo"):
        print(f"{o:<10}{mean[o]['tokens_per_s']:>10.1f}{mean[o]['examples_per_s']:>12.3f}"
              f"{mean[o]['outside_training_s']:>20.1f}")
    result = {
        "examples": args.examples, "steps": args.steps, "batch_size": args.batch_size,
        "rounds": rows, "mean": mean,
        "dpo_over_sft_tokens_per_s_ratio": round(
            mean["dpo"]["tokens_per_s"] / mean["sft"]["tokens_per_s"], 3),
        "dpo_over_sft_examples_per_s_ratio": round(
            mean["dpo"]["examples_per_s"] / mean["sft"]["examples_per_s"], 3),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()]}
    print(f"dpo/sft: tokens/s {result['dpo_over_sft_tokens_per_s_ratio']}, "
          f"examples/s {result['dpo_over_sft_examples_per_s_ratio']}; cpu flags "
          f"{' '.join(cpu_flags())}; load {result['load_avg_before'][0]}")

    write_result(args.out, result)


if __name__ == "__main__":
    main()
