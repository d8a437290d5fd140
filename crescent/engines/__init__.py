"""Generation engines behind one interface, one module per backend, registered by `engine.name`.

The stages stream through them (crescent/engines/streaming.py): offline vLLM
(`vllm_offline.py`), its Ray replicas (`ray_vllm.py`) and OpenAI-compatible servers
(`served.py`) take one request at a time; the hf engine (`hf.py`) gets what was submitted as
one `chat` call. A new backend is one module with a class registered as
`@ENGINES.register("name")` (crescent/registry.py), selected by `engine.name=name`.

One engine per process and configuration: `make_engine` hands the questions and answers stages
the same loaded model, and `release_engines` frees it (an offline vLLM engine holds about 6 GB
on CPU, which a dropped reference does not give back) before fine-tuning and at the run's end.
"""

from __future__ import annotations

import ctypes
import gc

from crescent.config import EngineConfig, ModelConfig
from crescent.engines.base import (  # noqa: F401  (the interface, importable from here)
    Conversation,
    Engine,
    Generation,
    LmEvalModel,
    Request,
    derive_seed,
)
from crescent.engines.streaming import generate_in_order  # noqa: F401
from crescent.registry import ENGINES

_OPEN: dict[str, Engine] = {}  # the engines this process holds, by configuration


def make_engine(engine: EngineConfig, model: ModelConfig) -> Engine:
    """The engine for this configuration: the one already open in this process, or a new one."""
    key = repr((engine, model))
    if key not in _OPEN:
        _OPEN[key] = ENGINES.get(engine.name).open(engine, model)
    return _OPEN[key]


def release_engines() -> None:
    """Close every engine this process holds, so that what runs next has their memory, and
    hand freed heap back to the system: after a fine-tune of the embedded model glibc kept
    3.2 GB of freed memory that the evaluate stage's scorer (a child process) could not use;
    `malloc_trim` brought the process to 0.7 GB."""
    while _OPEN:
        close = getattr(_OPEN.popitem()[1], "close", None)
        if close is not None:
            close()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim
