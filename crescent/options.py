"""The built-in components' own settings: one dataclass per engine, embedder and objective that
has any, read from its group's `options` node (`engine.options.*`, `dedup.options.*`,
`finetune.options.*`) exactly as a plug-in's `options=` dataclass is.

They live here, apart from the components, so that checking a config fills and range-checks
them before any stage runs without importing a backend (vLLM, torch, datasketch); the
registries name them (`builtin_options`, crescent/registry.py). A field marked operational
(`field(..., metadata=OPERATIONAL)`) changes how a run goes, never what it writes: cache keys
hold it at its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPERATIONAL = {"operational": True}  # field metadata: not part of any cache key


def _check(value, test, key: str, expected: str) -> None:
    """An option's range, checked when its dataclass is made (before any stage runs)."""
    if not test(value):
        raise ValueError(f"{key}={value}: expected {expected}")


@dataclass
class VLLMOptions:
    """`engine=vllm` and `engine=ray_vllm`: engine.options.<name>."""

    enforce_eager: bool = True  # skip graph capture; starts far faster on CPU
    tensor_parallel_size: int = 1  # GPUs one model is split over
    data_parallel_size: int = field(default=1, metadata=OPERATIONAL)  # model replicas (Ray actors), each on tensor_parallel_size GPUs
    ray_address: str | None = field(default=None, metadata=OPERATIONAL)  # None starts Ray on this node; "auto" joins a running cluster
    gpu_memory_utilization: float = field(default=0.9, metadata=OPERATIONAL)  # share of accelerator memory vLLM may reserve
    cpu_kvcache_gib: int = field(default=4, metadata=OPERATIONAL)  # on CPU: KV-cache GiB (VLLM_CPU_KVCACHE_SPACE), unless set in env

    def __post_init__(self):
        for key in ("tensor_parallel_size", "data_parallel_size"):
            _check(getattr(self, key), lambda v: v >= 1, key, "an integer >= 1")
        _check(self.gpu_memory_utilization, lambda v: 0 < v <= 1, "gpu_memory_utilization",
               "a share in (0, 1]")


@dataclass
class OpenAIOptions:
    """`engine=openai`: engine.options.<name>; where the servers are changes no output."""

    endpoints: list[str] = field(default_factory=list, metadata=OPERATIONAL)  # base URLs, e.g. http://host:8000/v1
    served_model: str | None = field(default=None, metadata=OPERATIONAL)  # model name on the servers; default: the model path
    concurrency: int = field(default=32, metadata=OPERATIONAL)  # requests in flight at once, over all endpoints
    max_retries: int = field(default=5, metadata=OPERATIONAL)  # retries of a failed request (each on the next endpoint)
    retry_backoff_s: float = field(default=2.0, metadata=OPERATIONAL)  # first retry wait, doubled per retry (at most 60 s)
    request_timeout_s: float = field(default=600.0, metadata=OPERATIONAL)  # seconds before a request counts as failed

    def __post_init__(self):
        _check(self.concurrency, lambda v: v >= 1, "concurrency", "an integer >= 1")
        _check(self.max_retries, lambda v: v >= 0, "max_retries", "an integer >= 0")
        _check(self.retry_backoff_s, lambda v: v >= 0, "retry_backoff_s",
               "a number of seconds >= 0")
        _check(self.request_timeout_s, lambda v: v > 0, "request_timeout_s",
               "a number of seconds > 0")


@dataclass
class MinHashOptions:
    """`dedup=minhash`: dedup.options.<name>."""

    num_perm: int = 128  # permutations per signature (Jaccard resolution 1/num_perm)
    shingle: int = 1  # words per shingle (every number is the same word, `#`)

    def __post_init__(self):
        _check(self.num_perm, lambda v: v >= 1, "num_perm", "an integer >= 1")
        _check(self.shingle, lambda v: v >= 1, "shingle", "an integer >= 1")


@dataclass
class SelfOptions:
    """`dedup=self`: dedup.options.<name>."""

    depth: float = 0.5  # share of the generator's layers run before pooling (the rest are not loaded)

    def __post_init__(self):
        _check(self.depth, lambda v: 0 < v <= 1, "depth", "a share in (0, 1]")


@dataclass
class DPOOptions:
    """`finetune.objective=dpo`: finetune.options.<name>."""

    beta: float = 0.1  # strength of the pull towards the reference (the student before training)
    margin_weight: bool = False  # weight each pair's loss by its vote-share margin (as ScPO)
    sft_weight: float = 0.0  # add this times the chosen responses' cross-entropy (as RPO, ScPO)

    def __post_init__(self):
        _check(self.beta, lambda v: v > 0, "beta", "a number > 0")
        _check(self.sft_weight, lambda v: v >= 0, "sft_weight", "a number >= 0")
