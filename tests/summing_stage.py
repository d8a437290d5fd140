"""A downstream test stage: reads the counting stage's items and writes their sum times `factor`."""

from __future__ import annotations

from crescent.cache import Stage
from crescent.infra.io import read_jsonl, write_json

STAGE = Stage("summing", ("factor",), upstream="counting")


def run(cfg, run_dir):
    items = read_jsonl(run_dir / "counting" / "items.jsonl")
    out = run_dir / "summing"
    write_json(out / "stats.json", {"sum": cfg.factor * sum(r["id"] for r in items)})
    return out
