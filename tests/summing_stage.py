"""A downstream test stage: reads the counting stage's items and writes their sum times `factor`."""

from __future__ import annotations

import sys

from crescent import cache
from crescent.cache import Stage
from crescent.infra.io import read_jsonl, write_json
from crescent.registry import STAGES

STAGE = Stage("summing", ("factor",), upstream="counting")


def run(cfg, run_dir):
    items = read_jsonl(cache.input_path(cfg, run_dir, STAGE.name, "items.jsonl"))
    out = run_dir / "summing"
    write_json(out / "stats.json", {"sum": cfg.factor * sum(r["id"] for r in items)})
    return out


STAGES.register(STAGE.name)(sys.modules[__name__])  # a stage from outside is its module
