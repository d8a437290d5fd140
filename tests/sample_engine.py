"""Prints, as JSON, `n` completions of one identical bait prompt from an engine (run as a script:
vLLM must start under `if __name__ == "__main__"`)."""

from __future__ import annotations

import json
import sys

from crescent.config import EngineConfig, ModelConfig, SamplingConfig
from crescent.engines import make_engine
from crescent.infra.models import SMOLLM2

if __name__ == "__main__":
    engine_name, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    bait = [{"role": "user", "content": "Write one new math word problem. Reply with the problem only."}]
    engine = make_engine(EngineConfig(name=engine_name, batch_size=32), ModelConfig(name=SMOLLM2))
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=48)
    # Half as separate identical requests, half as n samples of one request: both must vary.
    separate = engine.chat([bait] * (count // 2), sampling, n=1, seed=seed)
    together = engine.chat([bait], sampling, n=count - count // 2, seed=seed + 1)
    texts = [g.texts[0] for g in separate] + together[0].texts
    tokens = sum(g.total_tokens for g in separate + together)
    print("RESULT " + json.dumps({"texts": texts, "tokens": tokens}))
