"""Is the CPU already busy? A run on a CPU-only machine checks once, before its first stage.

vLLM, the fine-tune and the scorer each spread their work over every core. Two such processes
on one small machine do not share it evenly: on a 2-core AMX CPU, vLLM generated 54.5 tokens/s
alone and 7.9 and 8.0 when two generations ran at once, 6.9x slower each where a fair share
is 2x, because the threads of both wait on each other (experiments/bench_contention.py,
2026-12-06, docs/benchmarks.md). A run that starts beside another one says so in one line, so
that its hours are not a mystery; processes meant to work side by side each keep to their own
cores (`core_share`: Ray's CPU replicas, the test workers).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# Cores that others keep busy above which a run warns: half a core is a job, not noise.
BUSY_CORES = 0.5


def _ticks() -> tuple[int, int]:
    """All CPUs' time so far in clock ticks: (total, idle) from /proc/stat's first line."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values), values[3] + values[4]  # idle and iowait


def others_busy_cores(seconds: float = 0.5) -> float | None:
    """How many cores other processes kept busy over the next `seconds` (this process's own
    CPU time left out); None where /proc/stat is missing."""
    if not Path("/proc/stat").is_file():
        return None
    total, idle = _ticks()
    own = sum(os.times()[:2])
    time.sleep(seconds)
    total_after, idle_after = _ticks()
    busy_s = ((total_after - total) - (idle_after - idle)) / os.sysconf("SC_CLK_TCK")
    return max(0.0, (busy_s - (sum(os.times()[:2]) - own)) / seconds)


def core_share(index: int, count: int) -> list[int]:
    """The cores of this process's own that the `index`-th of `count` processes working side by
    side keeps to: every `count`-th, or one (shared) where they outnumber the cores. Each binds
    its threads there: bound to all of them, two spin against each other (above)."""
    cores = sorted(os.sched_getaffinity(0))
    return cores[index::count] or [cores[index % len(cores)]]


def busy_warning() -> str | None:
    """A one-line warning when other processes keep this machine's CPU busy, else None."""
    busy = others_busy_cores()
    if busy is None or busy < BUSY_CORES:
        return None
    cores = len(os.sched_getaffinity(0))
    return (f"other processes keep {busy:.1f} of this machine's {cores} cores busy: generation, "
            "fine-tuning and scoring use every core, and beside another such job they ran about "
            "7x slower on a 2-core CPU (docs/benchmarks.md)")
