"""An engine with settings of its own: transformers `generate` with every completion cut at
`engine.options.cap` tokens, whatever a stage asks for; `engine.options.note`, an operational
setting, stays out of cache keys.

    plugins=[tests.plugins.capped_engine] engine=hf engine.name=capped_hf +engine.options.cap=48
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crescent.config import SamplingConfig
from crescent.engines.hf import HFEngine
from crescent.options import OPERATIONAL
from crescent.registry import ENGINES


@dataclass
class CapOptions:
    cap: int = 40  # new tokens per completion at most
    # Changes nothing written (a real engine's server list or timeout is operational alike).
    note: str = field(default="", metadata=OPERATIONAL)

    def __post_init__(self):
        if self.cap < 1:
            raise ValueError(f"cap={self.cap}: expected an integer >= 1")


@ENGINES.register("capped_hf", options=CapOptions)
class CappedHF(HFEngine):
    def __init__(self, engine, model):
        super().__init__(engine, model)
        self.cap = engine.options.cap

    def complete(self, prompts, sampling, n, seed):
        capped = SamplingConfig(temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=min(sampling.max_tokens, self.cap))
        return super().complete(prompts, capped, n, seed)
