"""Numeric precision, decided in one place: the dtype a model loads in for generation, scoring
and dedup states (`model.dtype`, `student.dtype`), and the precision Lightning trains in
(`finetune.precision`), each from `auto` by the hardware.

On a GPU: bfloat16 (training in bf16-mixed, or 16-mixed where bf16 is missing). On a CPU:
bfloat16 where it has bfloat16 matrix units (AMX tiles, `amx_bf16`, or AVX512-BF16,
`avx512_bf16`), float32 elsewhere: on AVX2-only CPUs bfloat16 matmuls ran several times slower
than float32 here. Training on a CPU stays 32-true under `auto`: bf16-mixed trained only 1.25x
faster on an AMX CPU and its loss after 3 steps differed from float32's by 0.12
(experiments/bench_precision.py); `finetune.precision=bf16-mixed` opts in. LoRA's frozen base
is the exception (`lora_base_dtype`): held in the student's dtype, its matmuls run on the
bfloat16 units while everything that trains stays float32 (experiments/bench_training.py).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

# CPU flags (as /proc/cpuinfo names them) that give bfloat16 matrix work its own hardware.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (empty where /proc/cpuinfo is missing: float32 then)."""
    path = Path("/proc/cpuinfo")
    text = path.read_text() if path.exists() else ""
    found = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return frozenset(found.group(1).split()) if found else frozenset()


def cpu_dtype(flags: frozenset[str] | set[str]) -> str:
    """The dtype `auto` means on a CPU with these flags."""
    return "bfloat16" if any(flag in flags for flag in BF16_FLAGS) else "float32"


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_dtype(dtype: str) -> str:
    """A model's load dtype: `auto` by the hardware (this module's docstring), else as given."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if _gpu() else cpu_dtype(cpu_flags())


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning's precision: `auto` by the hardware the run trains on, else as given."""
    if precision != "auto":
        return precision
    if accelerator != "cpu" and _gpu():
        import torch

        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def lora_base_dtype(fcfg, student_dtype: str) -> str | None:
    """The dtype LoRA's frozen base is held and multiplied in (`finetune.lora_base_dtype`;
    `auto`: the dtype the student is saved in, so merging the adapters into it loses nothing
    that saving would keep), or None: full fine-tuning has no frozen base."""
    if fcfg.mode != "lora":
        return None
    setting = fcfg.lora_base_dtype
    return resolve_dtype(student_dtype if setting == "auto" else setting)


def describe(dtype: str) -> dict:
    """What `dtype` resolves to here and why: printed in a run's first lines and kept in every
    stage's stats.json."""
    resolved = resolve_dtype(dtype)
    has = [flag for flag in BF16_FLAGS if flag in cpu_flags()]
    if dtype != "auto":
        why = "set explicitly"
        if resolved == "bfloat16" and not has and not _gpu():
            why += f"; this CPU has none of {', '.join(BF16_FLAGS)}: several times slower than float32"
    elif _gpu():
        why = "GPU"
    else:
        why = f"CPU has {', '.join(has)}" if has else f"CPU has none of {', '.join(BF16_FLAGS)}"
    return {"configured": dtype, "resolved": resolved, "why": why}


def run_precision(cfg) -> dict:
    """Every precision a run uses, resolved: kept in its provenance (each stage's stats.json)."""
    return {"model.dtype": describe(cfg.model.dtype), "student.dtype": describe(cfg.student.dtype),
            "finetune.precision": resolve_precision(cfg.finetune.precision,
                                                    cfg.finetune.accelerator)}


def precision_line(chosen: dict) -> str:
    """`run_precision` in one line, printed among a run's first lines."""
    model, student = chosen["model.dtype"], chosen["student.dtype"]
    line = f"dtype {model['configured']} -> {model['resolved']} ({model['why']})"
    if student != model:
        line += f", student {student['configured']} -> {student['resolved']}"
    return f"{line}; training {chosen['finetune.precision']}"
