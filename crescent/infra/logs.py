"""Terminal output: crescent's own lines through `logging`, the libraries' chatter hidden.

`setup(verbose)` runs once per process before any stage. crescent's modules log with
`logging.getLogger(__name__)`; their lines go to stdout as they are written (the messages keep
their `crescent: ...` wording), from rank zero only when Lightning or torchrun runs several
processes. Without `verbose=true`, vLLM, transformers, datasets, lm-eval and Lightning keep
only their errors (which still print whole, tracebacks included), and library progress bars
inside a stage's own loop are off, leaving one bar per long loop. The settings travel to child
processes (the evaluate stage's scorer, vLLM workers) through environment variables.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "CRESCENT_VERBOSE"
# Read by the libraries when they are imported, here or in a child process.
_QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # torch's C++ warnings (vLLM's NUMA binding note on CPU)
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "LMEVAL_LOG_LEVEL": "ERROR",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_SILENT": "true",
    "PYTHONWARNINGS": "ignore",
}
_LIBRARY_LOGGERS = ("vllm", "transformers", "datasets", "lm_eval", "lm-eval", "lightning",
                    "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "torch",
                    "accelerate", "sentence_transformers", "faiss", "filelock", "httpx", "urllib3",
                    "peft", "wandb", "ray", "numexpr", "math_verify", "matplotlib")


def verbose() -> bool:
    """Whether library output is wanted (`verbose=true`), in this process or its parent."""
    return os.environ.get(VERBOSE_ENV) == "1"


def rank() -> int:
    """This process's global rank under DDP/torchrun/Slurm; 0 when it runs alone."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


class _RankZero(logging.Filter):
    """Informational lines from rank zero only; warnings and errors from every rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or rank() == 0


def setup(verbose_: bool = False) -> None:
    """Route crescent's loggers to stdout and, unless `verbose_`, quieten the libraries."""
    os.environ[VERBOSE_ENV] = "1" if verbose_ else "0"
    ours = logging.getLogger("crescent")
    if not any(getattr(h, "_crescent", False) for h in ours.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_RankZero())
        handler._crescent = True  # type: ignore[attr-defined]
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False  # libraries that configure the root logger do not print ours twice
    if verbose_:
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    quiet_libraries()


def quiet_libraries() -> None:
    """Library loggers to ERROR. Called again after importing Lightning, whose `__init__`
    sets its own logger back to INFO."""
    if verbose():
        return
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
