"""Benchmark: where a fine-tuning step's time goes, how fast the finetune stage trains, and what
its precision does to the loss, on this CPU, one run.

    python experiments/bench_training.py --quick [--isa avx2]
    python experiments/bench_training.py [speed] [--models qwen smollm2] [--steps 12] [--trl]
    python experiments/bench_training.py profile [--models qwen smollm2]
    python experiments/bench_training.py loss-gap [--steps 8]
    python experiments/bench_training.py curves [--steps 30] [--seeds 0 1]
    python experiments/bench_training.py gold --pairs 400 --epochs 2 [--configs default]
                                         [--steps N]
    (every mode: [--pairs 64] [--out outputs/bench_training_<mode>.json])

Data: the first --pairs GSM8K training problems with their gold solutions, written as the
gold control writes them (crescent/stages/answers.py `gold_rows`: the bare question as the user
turn, the solution ending in `The answer is: n`). Recipes: the 0.5B model (Qwen2.5-Coder-0.5B)
with `finetune=lora` as paper_05b trains it (micro-batches of 2, 4 accumulated, max_length
768), SmolLM2-135M with full fine-tuning (micro-batches of 8).

  speed     `crescent stages=[finetune]` as users run it, one process per configuration:
            `default` (the defaults), `float32` (lora_base_dtype=float32, padding_free=false),
            `today` (the stage as it was before this benchmark's changes, commit TODAY, from a
            worktree of it: float32, padded, torch's dropout draws), for full fine-tuning
            `bf16-mixed` too, and with --trl TRL's SFTTrainer (+PEFT for LoRA) on the same
            tokens, batch sizes and schedule, the model in float32 (`trl`) and in bfloat16 with
            bf16 autocast (`trl-bf16`). Steps of one micro-batch (accumulation 1). Trained
            (assistant) tokens/s and all tokens/s over the training loop, the first step
            left out; achieved FLOP/s against the CPU's peak (below).
  --quick   speed on the 0.5B LoRA recipe alone, `default` against `today` (about 4
            minutes on 2 cores); its last two lines are the verdict.
  --isa avx2  speed and --quick as an AVX2-only CPU runs them (ISA's comment): every kernel
            library held to AVX2 and `auto`'s dtype there (float32), for both configurations.
  profile   one optimiser step (after a warm-up step) under torch.profiler, every op's
            own time charged to what ran it: the base's matmuls, the LoRA branches,
            attention (the rest of each attention block), the LM head and loss, the
            optimiser, collation and padding, other (norms, activations, residual adds,
            embedding); backward ops charged to the forward op that made them.
  loss-gap  the 0.5B LoRA recipe in three precisions interleaved in one process on the same
            batches (4 examples a step), from the same adapters: float32; `bf16 model` (the
            model loaded in bfloat16, PEFT's float32 adapters: bfloat16 activations,
            residual stream, norms and LM head; what TRL+PEFT on a bfloat16 model trains);
            `bf16 matmuls` (the default: crescent's LowPrecisionLinear, the frozen base's
            matmuls in bfloat16, everything else float32). Per step: each loss against
            float32's; at the first step the adapters' gradient against float32's (cosine,
            relative error); and the LM head alone in bfloat16 on float32's hidden states.
  curves    `default` and `float32` for --steps steps (lr warm-up 3, cosine) for each seed
            (finetune.seed), 4 examples a step, 10% of --pairs held out: the mean loss over
            the last 10 steps and the held-out loss, and the plot bench_training_curves.png.
  gold      a whole gold fine-tune of the 0.5B model as a study runs it: --pairs pairs for
            --epochs epochs with paper_05b's micro-batches (8 examples a step), 5% held out,
            per configuration: wall time, training time, steps, losses. --steps N stops after
            N steps: the run's per-step time then projects the whole fine-tune (said so).

Peak FLOP/s: bench_precision.py's model (cores x clock x FLOPs a cycle per dtype). Achieved
FLOP/s counts the linear layers' multiply-adds: per token 2P forward and 2P for the input
gradients, plus 2P for the weight gradients of full fine-tuning (P: the decoder's linear
weights), and the LM head (2V.d forward, the same for its input gradient, again for its weight
gradient in full) on trained tokens only; attention's own products are left out. Every JSON
records the CPU flags and the load average at the start; above 0.5 a warning says that other
jobs share the cores (the figures then measure them too).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import cpu_flags, write_result
from calibration.gold_pairs import write_pairs

from crescent.infra.precision import cpu_dtype

ROOT = Path(__file__).resolve().parent.parent
QWEN, SMOL = "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"
MODELS = {"qwen": QWEN, "smollm2": SMOL}
# The recipe each model trains with (the issue's: paper_05b's LoRA, full fine-tuning of SmolLM2).
RECIPES = {
    QWEN: ["model=qwen_coder_05b", "finetune=lora", "finetune.batch_size=2",
           "finetune.accumulate_grad_batches=4", "finetune.max_length=768"],
    SMOL: ["finetune=full", "finetune.batch_size=8", "finetune.max_length=768"],
}
# speed: optimiser steps of one micro-batch (speed per token does not depend on accumulation),
# enough of them to time in minutes.
SPEED = ["finetune.accumulate_grad_batches=1"]
# Today's defaults against those before this benchmark (float32 base, padded batches).
CONFIGS = {"default": [], "float32": ["finetune.lora_base_dtype=float32",
                                      "finetune.padding_free=false"]}
# `today`: the finetune stage as it was before this benchmark's changes (float32, padded batches,
# torch's dropout draws), run from a worktree of that commit beside the others, in the same run.
TODAY = "e3cec23"
# Full fine-tuning's bfloat16 lever (float32 master weights, bfloat16 autocast), measured beside.
FULL_ONLY = {"bf16-mixed": ["finetune.precision=bf16-mixed"]}
COMMON = ["stages=[finetune]", "logger=none", "cache_dir=null", "seed=0", "finetune.seed=0",
          "finetune.val_fraction=0", "finetune.checkpoint_every_n_steps=0",
          "finetune.progress_bar=false", "finetune.log_every_n_steps=1", "finetune.max_epochs=-1",
          "finetune.warmup_steps=1"]
# --isa avx2: this CPU held to AVX2 in every kernel library torch calls (ATen's own kernels,
# oneDNN, MKL), and the dtype `auto` resolves to on an AVX2-only CPU (float32: it has no
# bfloat16 units), so an AVX-512 machine measures what an AVX2-only one runs. An emulation:
# the cores, caches and clock stay this machine's.
AVX2 = {"env": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
        "overrides": [f"model.dtype={cpu_dtype(frozenset({'avx2'}))}"]}
ISA = {"native": {"env": {}, "overrides": []}, "avx2": AVX2}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from crescent.__main__ import CONF_DIR
    from crescent.config import validate

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------ FLOPs and peak


@functools.cache
def flops_per_token(model: str, mode: str) -> tuple[float, float]:
    """(FLOPs per token, extra FLOPs per trained token): this module's docstring."""
    import torch
    from bench_precision import meta_model

    built = meta_model(model)
    head = built.get_output_embeddings().weight.numel()
    linear = sum(m.weight.numel() for name, m in built.named_modules()
                 if isinstance(m, torch.nn.Linear) and m is not built.get_output_embeddings())
    passes = 3 if mode == "full" else 2  # forward, input gradients, (weight gradients)
    return 2 * passes * linear, 2 * passes * head


@functools.cache
def peak() -> dict:
    from bench_precision import peak_flops

    return peak_flops()


# ------------------------------------------------------------------------------------ speed


def today_root(work: Path) -> Path:
    """A worktree of TODAY's commit under `work` (removed with it: `git worktree prune`)."""
    root = work / "today"
    if not root.exists():
        made = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(root),
                               TODAY], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            sys.exit(f"the `today` configuration needs commit {TODAY} in this clone's history: "
                     f"{made.stderr.strip()}")
    return root


def run_stage(model: str, config: str, pairs: Path, steps: int, work: Path,
              extra: list[str] = (), isa: str = "native") -> dict:
    """`crescent stages=[finetune]` in its own process (`today`: at TODAY's commit, its
    defaults; `isa`: ISA's emulation); its stats and per-step metrics."""
    run_dir = work / f"{model}-{config}"
    root = today_root(work) if config == "today" else ROOT
    own = [] if config == "today" else {**CONFIGS, **FULL_ONLY}[config]
    overrides = [*COMMON, *RECIPES[model], *own, f"finetune.input={pairs}",
                 f"finetune.max_steps={steps}", f"hydra.run.dir={run_dir}", *extra,
                 *ISA[isa]["overrides"]]
    env = dict(os.environ, PYTHONPATH=str(root), WANDB_MODE="disabled", HF_HUB_OFFLINE="1",
               **ISA[isa]["env"])
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "crescent", *overrides], capture_output=True,
                         text=True, env=env, check=False, cwd=root)
    if out.returncode != 0:
        sys.exit(f"{model} {config} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    stats = json.loads((run_dir / "finetune" / "stats.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "finetune" / "metrics.jsonl").open()]
    return {"model": model, "config": config, "wall_s": round(time.perf_counter() - started, 1),
            "train_s": stats["train_time_s"], "steps": len(rows),
            "tokens": sum(r["tokens"] for r in rows),
            "loss_tokens": sum(r["loss_tokens"] for r in rows),
            "losses": [r["loss"] for r in rows], "step_s": [r["seconds"] for r in rows],
            "step_tokens": [r["tokens"] for r in rows],
            "step_loss_tokens": [r["loss_tokens"] for r in rows],
            "val_loss": stats.get("val_loss_final"), "peak_rss_mib": stats["peak_rss_mib"],
            "lora_base_dtype": stats.get("lora_base_dtype"), "precision": stats["precision"]}


def rates(run: dict, model: str, mode: str, skip: int = 1) -> dict:
    """Tokens/s and FLOP/s over the steps after the first `skip` (warm-up: allocator, caches)."""
    seconds = sum(run["step_s"][skip:])
    tokens, trained = sum(run["step_tokens"][skip:]), sum(run["step_loss_tokens"][skip:])
    per_token, per_trained = flops_per_token(model, mode)
    flops = (tokens * per_token + trained * per_trained) / seconds
    p = peak()
    return {"trained_tokens_per_s": round(trained / seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1), "gflops": round(flops / 1e9, 1),
            "of_float32_peak": round(flops / p["float32"], 3),
            "of_bfloat16_peak": round(flops / p["bfloat16"], 3)}


TRL_DTYPES = {"trl": "float32", "trl-bf16": "bfloat16"}


def run_trl(model: str, pairs: Path, steps: int, dtype: str) -> dict:
    """TRL's SFTTrainer (+PEFT under LoRA) on the stage's recipe: the same token ids and
    assistant masks, micro-batch size, accumulation, learning rate, schedule, clipping, adapters
    (its batches in file order, the stage's shuffled: their losses are of other batches);
    the model loaded in `dtype` (bfloat16: with bf16 autocast, as a user of this CPU would
    run it; PEFT keeps the adapters float32)."""
    import resource

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from crescent.infra.models import resolve_model
    from crescent.methods.sft_data import IGNORE_INDEX, encode_conversation, load_conversations

    f = compose([*COMMON, *RECIPES[model], *SPEED, f"finetune.input={pairs}"]).finetune
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = [encode_conversation(tokenizer, c, f.max_length) for c in load_conversations(pairs)]
    examples = [e for e in examples if e is not None]
    data = Dataset.from_dict({
        "input_ids": [e["input_ids"] for e in examples],
        "completion_mask": [[int(x != IGNORE_INDEX) for x in e["labels"]] for e in examples]})
    net = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    peft_config = None
    if f.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=f.lora_r, lora_alpha=f.lora_alpha, lora_dropout=f.lora_dropout,
                                 target_modules=list(f.lora_target_modules), task_type="CAUSAL_LM")

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **kw):
            self.marks.append(time.perf_counter())

        def on_train_begin(self, *a, **kw):
            self.marks = [time.perf_counter()]

        def on_train_end(self, *a, **kw):
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            output_dir=tmp, per_device_train_batch_size=f.batch_size,
            gradient_accumulation_steps=f.accumulate_grad_batches, max_steps=steps,
            learning_rate=f.lr, lr_scheduler_type="cosine", warmup_steps=1, weight_decay=0.0,
            max_grad_norm=f.gradient_clip_val, logging_steps=1, save_strategy="no",
            eval_strategy="no", report_to="none", train_sampling_strategy="sequential",
            max_length=f.max_length, packing=False, completion_only_loss=True, use_cpu=True,
            dataloader_num_workers=0, dataloader_pin_memory=False, seed=0,
            bf16=dtype == "bfloat16",
            fp16=False, disable_tqdm=True, gradient_checkpointing=False)
        trainer = SFTTrainer(model=net, args=config, train_dataset=data,
                             processing_class=tokenizer, callbacks=[clock],
                             peft_config=peft_config)
        trainer.train()
    # Sequential batches: each step's examples are the next batch_size x accumulation ones.
    per_step = f.batch_size * f.accumulate_grad_batches
    lengths = [len(e["input_ids"]) for e in examples]
    trained = [sum(x != IGNORE_INDEX for x in e["labels"][1:]) for e in examples]

    def at(values, s):
        return sum(values[(s * per_step + i) % len(values)] for i in range(per_step))

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"model": model, "config": next(k for k, v in TRL_DTYPES.items() if v == dtype),
            "steps": steps, "losses": losses,
            "step_s": [b - a for a, b in zip(clock.marks, clock.marks[1:])],
            "step_tokens": [at(lengths, s) for s in range(steps)],
            "step_loss_tokens": [at(trained, s) for s in range(steps)],
            "peak_rss_mib": round(clock.peak, 1)}


def child(what: str, model: str, pairs: Path, steps: int) -> dict:
    """What `in_child` asks of this process: a TRL run, or `profile:<config>`."""
    if what.startswith("profile:"):
        return profile_one(model, CONFIGS[what.split(":", 1)[1]], pairs)
    return run_trl(model, pairs, steps, TRL_DTYPES[what])


def in_child(args, what: str, model: str, pairs: Path) -> dict:
    """`child(what, ...)` in a process of its own: its JSON result line."""
    cmd = [sys.executable, __file__, "--child", what, "--child-model", model,
           "--child-pairs", str(pairs), "--steps", str(args.steps)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        sys.exit(f"{what} on {model} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.split("RESULT ", 1)[1])


def speed(args, models: list[str], configs: list[str]) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pairs = write_pairs(work / "pairs.jsonl", args.pairs)
        for model in models:
            mode = "lora" if "finetune=lora" in RECIPES[model] else "full"
            extra = list(FULL_ONLY) if mode == "full" and args.mode == "speed" else []
            for config in configs + extra + (list(TRL_DTYPES) if args.trl else []):
                run = (in_child(args, config, model, pairs) if config in TRL_DTYPES
                       else run_stage(model, config, pairs, args.steps, work, SPEED, args.isa))
                run.update(rates(run, model, mode), mode=mode)
                runs.append(run)
                print(f"{model} {config}: {run['trained_tokens_per_s']} trained tokens/s, "
                      f"{run['tokens_per_s']} tokens/s, {run['gflops']} GFLOP/s "
                      f"({run['of_float32_peak']:.0%} of float32 peak, "
                      f"{run['of_bfloat16_peak']:.0%} of bfloat16), loss "
                      f"{run['losses'][0]:.4f} -> {run['losses'][-1]:.4f}", flush=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)
    print(f"\n{'model':<30}{'config':<10}{'trained tok/s':>14}{'tok/s':>9}{'GFLOP/s':>9}"
          f"{'fp32 peak':>10}{'bf16 peak':>10}{'vs today':>11}")
    for run in runs:
        base = next(r for r in runs if r["model"] == run["model"] and r["config"] == "today")
        run["over_today"] = round(run["trained_tokens_per_s"] / base["trained_tokens_per_s"], 3)
        print(f"{run['model']:<30}{run['config']:<10}{run['trained_tokens_per_s']:>14}"
              f"{run['tokens_per_s']:>9}{run['gflops']:>9}{run['of_float32_peak']:>10.1%}"
              f"{run['of_bfloat16_peak']:>10.1%}{run['over_today']:>10.2f}x")
    return {"runs": runs, "peak": peak(), "pairs": args.pairs, "steps": args.steps,
            "isa": args.isa, **({"emulated": ISA[args.isa]} if args.isa != "native" else {})}


def quick_lines(result: dict) -> None:
    """The --quick verdict: the loss and the speed-up of the default over today's training."""
    by = {r["config"]: r for r in result["runs"]}
    last = max(1, min(len(by["default"]["losses"]), 5))
    default, today = (statistics.mean(by[c]["losses"][-last:]) for c in ("default", "today"))
    print(f"loss: default {default:.4f}, float32 {today:.4f} (mean of the last {last} steps; "
          f"float32: today's training, commit {TODAY})")
    where = "this machine" if result["isa"] == "native" else f"this machine as {result['isa']} only"
    print(f"speedup: {by['default']['over_today']:.2f}x (trained tokens/s, default over "
          f"float32 unpacked, same data, {where})")


# ---------------------------------------------------------------------------------- in-process


def build(model: str, overrides: list[str], pairs: Path, load_dtype: str = "float32",
          base_dtype: str | None = "auto", seed: int = 0):
    """The finetune stage's module and data for `model`'s recipe, built as the stage builds
    them, in this process (no trainer): (module, train rows, data module)."""
    from transformers import AutoTokenizer

    from crescent.infra.models import resolve_model
    from crescent.infra.precision import lora_base_dtype
    from crescent.methods import training
    from crescent.registry import OBJECTIVES

    cfg = compose([*COMMON, *RECIPES[model], *overrides, f"finetune.input={pairs}"])
    f = cfg.finetune
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    objective = OBJECTIVES.get(f.objective)
    training.seed_everything(seed)
    data = objective.data_module(objective.load_examples(pairs), tokenizer, f, seed)
    data.setup("fit")
    base = lora_base_dtype(f, cfg.student.dtype) if base_dtype == "auto" else base_dtype
    training.seed_everything(seed)  # the same adapters in every variant
    module = objective(f, path, load_dtype, None, base_dtype=base)
    module.configure_model()
    return module, data


def optimizer_for(module):
    import torch

    params = [p for p in module.model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=module.fcfg.lr, weight_decay=0.0, fused=True), params


def train_step(module, data, rows: list[int], optimizer, params) -> float:
    """One optimiser step over `rows` in micro-batches of the recipe's size; the loss is the
    mean of the micro-batches' losses, as the stage's metrics log it."""
    import torch

    f = module.fcfg
    losses = []
    for s in range(0, len(rows), f.batch_size):
        batch = data._collate([data.train[i] for i in rows[s : s + f.batch_size]])
        loss, _ = module.compute_loss(batch)
        (loss / math.ceil(len(rows) / f.batch_size)).backward()
        losses.append(float(loss.detach()))
    torch.nn.utils.clip_grad_norm_(params, f.gradient_clip_val)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return statistics.mean(losses)


# ------------------------------------------------------------------------------------ profile

CATEGORIES = ("base matmuls", "LoRA branches", "attention", "LM head and loss", "optimizer",
              "collation and padding", "other")


def labelled(fn, label: str):
    from torch.profiler import record_function

    def wrapped(*a, **kw):
        with record_function(label):
            return fn(*a, **kw)
    return wrapped


def label_modules(module) -> None:
    """Wrap what the profile tells apart in record_function ranges (innermost wins)."""
    import torch

    from crescent.methods.training import LowPrecisionLinear
    from crescent.objectives import sft

    model = module.model
    head = module.base.get_output_embeddings()
    for name, m in model.named_modules():
        if "lora_" in name.rsplit(".", 1)[-1] or ".lora_" in name:
            if isinstance(m, (torch.nn.Linear, torch.nn.Dropout)):
                m.forward = labelled(m.forward, "LoRA branches")
        elif isinstance(m, (LowPrecisionLinear, torch.nn.Linear)) and m is not head:
            m.forward = labelled(m.forward, "base matmuls")
        elif name.endswith("self_attn"):
            m.forward = labelled(m.forward, "attention")
    sft.linear_cross_entropy = labelled(sft.linear_cross_entropy, "LM head and loss")
    sft.padding_free = labelled(sft.padding_free, "collation and padding")


def charge(prof) -> dict[str, float]:
    """Every op's own CPU time charged to its innermost label; backward ops to the label of
    the forward op that made them (the autograd node's sequence number)."""
    events = list(prof.events())
    label_of_seq: dict[int, str] = {}

    def label(e) -> str | None:
        while e is not None:
            if e.name in CATEGORIES:
                return e.name
            e = e.cpu_parent
        return None

    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::"):
            found = label(e)
            if found and e.sequence_nr not in label_of_seq:
                label_of_seq[e.sequence_nr] = found
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for e in events:
        if e.name in CATEGORIES:
            continue
        where, node = None, e
        while node is not None and where is None:
            if node.name in CATEGORIES:
                where = node.name
            elif node.name.startswith("autograd::engine::evaluate_function"):
                where = label_of_seq.get(node.sequence_nr)
            node = node.cpu_parent
        totals[where or "other"] += e.self_cpu_time_total / 1e6
    return totals


def profile_one(model: str, overrides: list[str], pairs: Path) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    module, data = build(model, overrides, pairs)
    optimizer, params = optimizer_for(module)
    f = module.fcfg
    per_step = f.batch_size * f.accumulate_grad_batches
    train_step(module, data, list(range(per_step)), optimizer, params)  # warm-up
    label_modules(module)
    rows = list(range(per_step, 2 * per_step))
    collate = data._collate
    data._collate = labelled(collate, "collation and padding")
    optimizer.step = labelled(optimizer.step, "optimizer")
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof, record_function("step"):
        train_step(module, data, rows, optimizer, params)
    wall = time.perf_counter() - started
    totals = charge(prof)
    counted = sum(totals.values())
    tokens = sum(len(data.train[i]["input_ids"]) for i in rows)
    del module
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"wall_s": round(wall, 2), "tokens": tokens,
            "seconds": {k: round(v, 3) for k, v in totals.items()},
            "share": {k: round(v / counted, 3) for k, v in totals.items()}}


def profile_mode(args, models: list[str], configs: list[str]) -> dict:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_pairs(Path(tmp) / "pairs.jsonl", args.pairs)
        for model in models:
            for config in configs:
                key = f"{model} {config}"
                result[key] = in_child(args, f"profile:{config}", model, pairs)
                print(f"{key}: {result[key]['wall_s']} s a step", flush=True)
    print(f"\n{'share of a step':<24}" + "".join(f"{k:>22}" for k in result))
    for cat in CATEGORIES:
        print(f"{cat:<24}" + "".join(f"{r['share'][cat]:>22.1%}" for r in result.values()))
    print(f"{'seconds a step':<24}" + "".join(f"{r['wall_s']:>22}" for r in result.values()))
    return result


# ----------------------------------------------------------------------------------- loss gap

VARIANTS = {  # name -> (load dtype, frozen base dtype)
    "float32": ("float32", None),
    "bf16 model": ("bfloat16", None),
    "bf16 matmuls": ("float32", "bfloat16"),
}


def loss_gap(args) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_pairs(Path(tmp) / "pairs.jsonl", args.pairs)
        overrides = ["finetune.batch_size=4", "finetune.accumulate_grad_batches=1"]
        built = {name: build(QWEN, overrides, pairs, load, base)
                 for name, (load, base) in VARIANTS.items()}
    opts = {name: optimizer_for(m) for name, (m, _) in built.items()}
    losses = {name: [] for name in VARIANTS}
    seconds = {name: 0.0 for name in VARIANTS}
    gradients = {}
    n_rows = len(next(iter(built.values()))[1].train)
    for step in range(args.steps):
        rows = [(step * 4 + i) % n_rows for i in range(4)]
        for name, (module, data) in built.items():
            optimizer, params = opts[name]
            torch.manual_seed(step)  # the same LoRA dropout masks in every variant
            if step == 0:  # the first step's gradient, before the optimiser moves anything
                batch = data._collate([data.train[i] for i in rows])
                loss, _ = module.compute_loss(batch)
                loss.backward()
                gradients[name] = torch.cat([p.grad.flatten().float() for p in params])
                optimizer.zero_grad(set_to_none=True)
                torch.manual_seed(step)
            started = time.perf_counter()
            losses[name].append(train_step(module, data, rows, optimizer, params))
            seconds[name] += time.perf_counter() - started
        print(f"step {step + 1}: " + ", ".join(f"{n} {v[-1]:.4f}" for n, v in losses.items()),
              flush=True)
    ref = gradients["float32"]
    grads = {name: {"cosine": round(float(torch.nn.functional.cosine_similarity(
                        g.double(), ref.double(), dim=0)), 5),
                    "relative_error": round(float((g - ref).norm() / ref.norm()), 5)}
             for name, g in gradients.items()}
    head = head_in_bf16(*built["float32"])
    print(f"\n{'step':<6}" + "".join(f"{n:>14}{'vs fp32':>9}" for n in VARIANTS))
    for s in range(args.steps):
        base = losses["float32"][s]
        print(f"{s + 1:<6}" + "".join(f"{losses[n][s]:>14.4f}{losses[n][s] / base - 1:>+9.1%}"
                                      for n in VARIANTS))
    print("first-step gradient of the adapters against float32's: " + ", ".join(
        f"{n} cosine {g['cosine']}, relative error {g['relative_error']}"
        for n, g in grads.items() if n != "float32"))
    print(f"LM head in bfloat16 on float32's hidden states: loss {head['bf16']:.5f} against "
          f"{head['fp32']:.5f} ({head['bf16'] / head['fp32'] - 1:+.2%})")
    print("seconds per step: " + ", ".join(f"{n} {s / args.steps:.2f}" for n, s in seconds.items()))
    return {"losses": losses, "first_step_gradients": grads, "lm_head": head,
            "seconds_per_step": {n: round(s / args.steps, 3) for n, s in seconds.items()}}


def head_in_bf16(module, data) -> dict:
    """The loss of the same hidden states with the LM head in float32 and in bfloat16."""
    import torch

    from crescent.methods.fused_loss import linear_cross_entropy
    from crescent.methods.sft_data import IGNORE_INDEX

    batch = data._collate(data.train[:4])
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    with torch.no_grad():
        backbone = getattr(module.base, module.base.base_model_prefix)
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                          ).last_hidden_state[:, :-1][mask]
        weight = module.base.get_output_embeddings().weight
        n = int(mask.sum())
        return {"fp32": float(linear_cross_entropy(hidden, weight, targets[mask])) / n,
                "bf16": float(linear_cross_entropy(hidden.bfloat16(), weight.bfloat16(),
                                                   targets[mask])) / n}


# ------------------------------------------------------------------------------------- curves


def curves(args) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pairs = write_pairs(work / "pairs.jsonl", args.pairs)
        for seed in args.seeds:
            for config in ("default", "float32"):
                extra = [f"finetune.seed={seed}", "finetune.val_fraction=0.1",
                         "finetune.warmup_steps=3", "finetune.accumulate_grad_batches=2"]
                run = run_stage(QWEN, config, pairs, args.steps, work / f"seed{seed}", extra)
                run["seed"] = seed
                run["last10"] = round(statistics.mean(run["losses"][-10:]), 4)
                runs.append(run)
                print(f"seed {seed} {config}: mean loss of the last 10 steps {run['last10']}, "
                      f"held-out {run['val_loss']}, {run['train_s']} s", flush=True)
    summary = {}
    for config in ("default", "float32"):
        mine = [r for r in runs if r["config"] == config]
        summary[config] = {
            "last10": [r["last10"] for r in mine], "val": [r["val_loss"] for r in mine],
            "last10_mean": round(statistics.mean(r["last10"] for r in mine), 4),
            "val_mean": round(statistics.mean(r["val_loss"] for r in mine), 4),
            "train_s_mean": round(statistics.mean(r["train_s"] for r in mine), 1)}
    d, f = summary["default"], summary["float32"]
    print(f"\n{'':<10}{'last-10 loss per seed':>28}{'mean':>8}{'held-out per seed':>26}"
          f"{'mean':>8}{'train s':>9}")
    for config, s in summary.items():
        print(f"{config:<10}{s['last10']!s:>28}{s['last10_mean']:>8}{s['val']!s:>26}"
              f"{s['val_mean']:>8}{s['train_s_mean']:>9}")
    print(f"default against float32: last-10 loss {d['last10_mean'] / f['last10_mean'] - 1:+.2%}, "
          f"held-out {d['val_mean'] / f['val_mean'] - 1:+.2%}; float32's own spread across "
          f"seeds: last-10 {max(f['last10']) - min(f['last10']):.4f}, held-out "
          f"{max(f['val']) - min(f['val']):.4f}")
    plot_curves(runs, Path(args.out).with_suffix(".png"))
    return {"runs": runs, "summary": summary}


def plot_curves(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        style = "-" if run["config"] == "default" else "--"
        ax.plot(range(1, len(run["losses"]) + 1), run["losses"], style,
                label=f"{run['config']} seed {run['seed']}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    ax.set_title("Qwen2.5-Coder-0.5B LoRA on GSM8K gold pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# --------------------------------------------------------------------------------------- gold


def gold(args) -> dict:
    work = ROOT / "outputs" / "bench_training_gold"
    work.mkdir(parents=True, exist_ok=True)
    pairs = write_pairs(work / f"gold{args.pairs}.jsonl", args.pairs)
    runs = []
    for config in args.configs:
        extra = [f"finetune.max_epochs={args.epochs}", "finetune.val_fraction=0.05"]
        run = run_stage(QWEN, config, pairs, args.steps, work / f"{args.pairs}x{args.epochs}", extra)
        n_train = args.pairs - max(1, round(0.05 * args.pairs))
        full_steps = math.ceil(math.ceil(n_train / 2) / 4) * args.epochs  # 2 a micro-batch, 4 a step
        run["projected"] = run["steps"] < full_steps
        run["whole_fine_tune_s"] = round(run["train_s"] * full_steps / run["steps"], 1)
        runs.append(run)
        say = "projected from" if run["projected"] else "measured over"
        print(f"{config}: {run['whole_fine_tune_s']} s of training for {full_steps} steps "
              f"({say} {run['steps']} steps; process wall {run['wall_s']} s), loss "
              f"{run['losses'][0]:.4f} -> {run['losses'][-1]:.4f}, held-out {run['val_loss']}",
              flush=True)
    return {"runs": runs, "pairs": args.pairs, "epochs": args.epochs}


# --------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="speed",
                        choices=["speed", "profile", "loss-gap", "curves", "gold"])
    parser.add_argument("--epochs", type=int, default=2, help="gold: passes over the pairs")
    parser.add_argument("--quick", action="store_true", help="speed on the 0.5B LoRA recipe")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--configs", nargs="+", choices=[*CONFIGS, "today"],
                        default=[*CONFIGS, "today"])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trl", action="store_true", help="speed: TRL's SFTTrainer too")
    parser.add_argument("--isa", choices=list(ISA), default="native",
                        help="speed, --quick: emulate an AVX2-only CPU (ISA's comment)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    parser.add_argument("--child-pairs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.child_model, Path(args.child_pairs),
                                           args.steps)))
        return
    mode = "quick" if args.quick else args.mode
    args.steps = args.steps or {"quick": 12, "speed": 10, "loss-gap": 8, "curves": 30,
                                "profile": 1, "gold": -1}[mode]
    emulated = args.isa != "native"
    if emulated and (mode not in ("quick", "speed") or args.trl):
        parser.error("--isa applies to speed and --quick without --trl")
    args.out = args.out or f"outputs/bench_training_{mode}{'_' + args.isa if emulated else ''}.json"
    models = [MODELS[m] for m in args.models]
    print(f"CPU flags: {' '.join(cpu_flags())}, {os.cpu_count()} cores"
          + (f"; emulating {args.isa} only: {ISA[args.isa]}" if emulated else ""))
    # Two heavy jobs on 2 cores run several times slower each, and a run beside another job
    # looks like any other: say so before the figures (the 1-minute load average lags).
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f} before any run: other jobs share these "
              f"{os.cpu_count()} cores, and the figures below measure them too", flush=True)
    if mode == "quick":
        result = speed(args, [QWEN], ["default", "today"])
    elif mode == "speed":
        result = speed(args, models, args.configs)
    elif mode == "profile":
        result = profile_mode(args, models, [c for c in args.configs if c in CONFIGS])
    elif mode == "gold":
        result = gold(args)
    elif mode == "loss-gap":
        result = loss_gap(args)
    else:
        result = curves(args)
    write_result(args.out, {"mode": mode, "load_at_start": load, **result})
    if mode == "quick":
        quick_lines(result)


if __name__ == "__main__":
    main()
