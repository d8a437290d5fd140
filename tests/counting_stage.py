"""A tiny resumable stage for testing the runner: appends ids 0..n-1, can crash at a given id
or take its time over each (COUNTING_DELAY_S), so that two processes overlap."""

from __future__ import annotations

import os
import sys
import time

from omegaconf import OmegaConf

from crescent.cache import Stage
from crescent.infra.io import JsonlAppender, read_jsonl, write_json
from crescent.registry import STAGES

STAGE = Stage("counting", ("n",), outputs=("items.jsonl",))
N = 10


def run(cfg, run_dir):
    out = run_dir / "counting"
    path = out / "items.jsonl"
    have = {r["id"] for r in read_jsonl(path)} if path.exists() else set()
    crash_at = int(os.environ.get("COUNTING_CRASH_AT", "-1"))
    n = OmegaConf.select(cfg, "n", default=N)
    with JsonlAppender(path) as items:
        for i in range(n):
            if i in have:
                continue
            if i == crash_at:
                raise RuntimeError(f"crash at {i}")
            time.sleep(float(os.environ.get("COUNTING_DELAY_S", "0")))
            items.write({"id": i})
    write_json(out / "stats.json", {"items": n, "resumed_from": len(have)})
    return out


STAGES.register(STAGE.name)(sys.modules[__name__])  # a stage from outside is its module
