"""A stage between answers and finetune, with a setting of its own: keeps the kept questions
whose vote agreement is at least `stage_options.agreement_filter.min_agreement`.

    plugins=[tests.plugins.agreement_filter]
    stages=[questions,answers,agreement_filter,finetune]
    +stage_options.agreement_filter.min_agreement=0.75

It provides what the answers stage provides (qa.jsonl, sft.jsonl), so a finetune listed after
it trains on its files; its cache key holds its setting and the answers stage's key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from crescent import cache
from crescent.cache import Stage
from crescent.infra.io import read_jsonl, write_json, write_jsonl
from crescent.registry import STAGES


@dataclass
class FilterOptions:
    min_agreement: float = 0.75  # share of the samples that agree with the kept answer

    def __post_init__(self):  # a range the type cannot say: checked before any stage
        if not 0 <= self.min_agreement <= 1:
            raise ValueError(f"min_agreement={self.min_agreement}: expected a share in [0, 1]")


STAGE = Stage("agreement_filter", upstream="answers", provides="answers",
              outputs=("qa.jsonl", "sft.jsonl"))


def run(cfg, run_dir: Path) -> Path:
    floor = cfg.stage_options.agreement_filter.min_agreement
    rows = list(read_jsonl(cache.input_path(cfg, run_dir, STAGE.name, "qa.jsonl")))
    kept = [r for r in rows if r["agreement"] >= floor]
    out = Path(run_dir) / STAGE.name
    write_jsonl(out / "qa.jsonl", kept)
    write_jsonl(out / "sft.jsonl", [
        {"messages": [{"role": "user", "content": r["question"]},
                      {"role": "assistant", "content": r["response"]}]} for r in kept])
    write_json(out / "stats.json", {"read": len(rows), "kept": len(kept), "min_agreement": floor})
    return out


STAGES.register(STAGE.name, options=FilterOptions)(sys.modules[__name__])
