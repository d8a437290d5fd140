"""Benchmark data (GSM8K, MATH-500): where a run finds it, its pinned identity, `crescent-data`.

A run reads `gsm8k/test.jsonl`, `gsm8k/train.jsonl` and `math500/test.jsonl` from the first of:
`eval.data_dir` (when set), `$CRESCENT_DATA`, `<crescent cache>/data` (`$CRESCENT_CACHE`,
default `~/.cache/crescent`). `crescent-data fetch` fills the cache copy from the Hugging Face
hub at pinned revisions, or `--from DIR` from a local copy; every file is checked against the
sha256 pinned below (the files of the reference copy this project was developed on).
Cache keys use these content hashes, never a machine path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from crescent.errors import CrescentError
from crescent.infra.io import FILE_MODE, hash_file

ENV = "CRESCENT_DATA"
FETCH = "crescent-data fetch"
# relative path -> sha256 of the canonical JSON Lines file (fields `question`, `answer`).
PINS = {
    "gsm8k/test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "gsm8k/train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "math500/test.jsonl": "27866aafb9474291b4168f8c2b5db6b92e1ba8f4e682d86db9a7f3fe5dd6a34b",
}
# Hub sources at pinned commits (revisions as used by public code; not reachable from CI here).
HUB = {
    "gsm8k/test.jsonl": ("openai/gsm8k", "main", "740312add88f781978c0658806c59bc2815b9866", "test"),
    "gsm8k/train.jsonl": ("openai/gsm8k", "main", "740312add88f781978c0658806c59bc2815b9866",
                          "train"),
    "math500/test.jsonl": ("HuggingFaceH4/MATH-500", None, "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be",
                           "test"),
}
_MATH_FINAL = "The answer is: "  # the reference copy appends it to each MATH-500 solution


def cache_data_dir() -> Path:
    from crescent.infra.models import cache_dir

    return cache_dir() / "data"


def data_dir(configured: str | None = None) -> Path:
    """The benchmark folder of a run: `eval.data_dir` if set, else $CRESCENT_DATA, else the
    cache copy (which may not exist yet: `require` says how to make it)."""
    if configured:
        return Path(str(configured)).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    return cache_data_dir()


def missing(path: Path) -> str:
    """The one line for a benchmark file that is not there, naming the command that fixes it."""
    return (f"benchmark data {path} not found (looked in eval.data_dir, else ${ENV}, else "
            f"{cache_data_dir()}): run `{FETCH}` (Hugging Face hub) or `{FETCH} --from DIR` "
            f"(a local copy), or set {ENV}=DIR")


def require(configured: str | None, rel: str) -> Path:
    path = data_dir(configured) / rel
    if not path.is_file():
        raise CrescentError(missing(path))
    return path


def identity(configured: str | None, rels: Iterable[str]) -> dict[str, str]:
    """rel -> sha256 of the file a run would read (or "missing"): the data part of a cache key."""
    root = data_dir(configured)
    return {rel: _sha256_cached(str((root / rel).absolute())) for rel in sorted(rels)}


def _sha256_cached(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        return "missing"
    st = p.stat()
    return _sha256(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size, mtime: the cache's key
    return hash_file(path).hexdigest()


def fill_data_dir(cfg) -> None:
    """Set an unset `eval.data_dir` to the resolved folder, so `${eval.data_dir}` in configs
    (questions.seeds of baseline_seed_aug) points where the stages read."""
    if "eval" in cfg and not cfg.eval.get("data_dir"):
        cfg.eval.data_dir = str(data_dir(None))
    if "eval" in cfg:
        warn_unpinned(Path(cfg.eval.data_dir))


@lru_cache(maxsize=8)  # once a process: the config is checked before the run and in it
def warn_unpinned(root: Path) -> None:
    """A line for each benchmark file there that is not the pinned one: its scores are not
    comparable with published ones (its own hash still keys the cache, so nothing is mixed)."""
    import logging

    for rel, status in check(root):
        if status == "changed":
            logging.getLogger(__name__).warning(
                "crescent: warning: %s is not the pinned %s (its sha256 differs): scores on it "
                "are not comparable with published ones", root / rel, rel)


# ------------------------------------------------------------------ crescent-data


def fetch(dest: Path, source: Path | None = None) -> list[str]:
    """Write every pinned file into `dest`, from `source` (a folder laid out like the data
    dir) or the hub, each checked against its pin before it is renamed into place."""
    dest.mkdir(parents=True, exist_ok=True)
    lines = []
    for rel, pin in PINS.items():
        target = dest / rel
        if target.is_file() and _sha256_cached(str(target)) == pin:
            lines.append(f"{rel}: ok (already there)")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        try:
            if source is not None:
                _copy_local(source / rel, Path(tmp))
            else:
                _download(rel, Path(tmp))
            got = _sha256_cached(tmp)
            if got != pin:
                raise CrescentError(f"{rel}: sha256 {got} is not the pinned {pin} "
                                    f"(a different version of the data); nothing written")
            os.chmod(tmp, FILE_MODE)  # mkstemp makes it private; the data is not
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        lines.append(f"{rel}: ok ({pin[:12]})")
    return lines


def _copy_local(src: Path, tmp: Path) -> None:
    if not src.is_file():
        raise CrescentError(f"--from: {src} not found")
    shutil.copyfile(src, tmp)
    licence = src.parent / "LICENSE"
    if licence.is_file():  # the licence travels with the data (not pinned)
        shutil.copyfile(licence, tmp.parent / "LICENSE")


def _download(rel: str, tmp: Path) -> None:
    """One split from the hub, written in the reference layout (one JSON object a line,
    `question` and `answer`, ASCII-escaped as `json.dumps` writes by default)."""
    repo, config, revision, split = HUB[rel]
    _check_hub()
    try:
        import datasets

        rows = datasets.load_dataset(repo, config, revision=revision, split=split)
    except Exception as e:  # noqa: BLE001 -- offline, hub down, gated: one line, not a retry traceback
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise CrescentError(
            f"cannot load {repo}@{revision[:8]} from the Hugging Face hub ({type(e).__name__}: "
            f"{first}); copy the files from a machine that has them and run `{FETCH} --from DIR`"
        ) from None
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            if repo.endswith("MATH-500"):
                row = {"question": row["problem"],
                       "answer": row["solution"] + _MATH_FINAL + row["answer"]}
            f.write(json.dumps({"question": row["question"], "answer": row["answer"]}) + "\n")


def _check_hub(timeout_s: float = 5.0) -> None:
    """Fail in one line, at once, where the hub cannot be reached (the datasets client would
    retry for half a minute and print every retry)."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    why = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") \
        else None
    if why is None:
        try:
            socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout_s).close()
        except OSError as e:
            why = f"{endpoint.hostname}: {e.strerror or e}"
    if why:
        raise CrescentError(f"the Hugging Face hub cannot be reached ({why}); copy gsm8k/ and "
                            f"math500/ from a machine that has them and run `{FETCH} --from DIR`, "
                            f"or set {ENV}=DIR")


def check(root: Path) -> list[tuple[str, str]]:
    """(rel, status) for every pinned file under `root`: ok, missing or changed."""
    out = []
    for rel, pin in PINS.items():
        got = _sha256_cached(str((root / rel).absolute()))
        out.append((rel, "ok" if got == pin else got if got == "missing" else "changed"))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="crescent-data", description="Benchmark data (GSM8K, MATH-500) for offline runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("fetch", help="write the pinned files into the crescent cache")
    get.add_argument("--from", dest="source", type=Path,
                     help="a local folder with gsm8k/ and math500/ (default: the Hugging Face hub)")
    get.add_argument("--dest", type=Path, help=f"target folder (default: {cache_data_dir()})")
    sub.add_parser("where", help="which folder a run reads, and whether each file matches its pin")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            dest = args.dest or cache_data_dir()
            for line in fetch(dest, args.source):
                print(f"crescent-data: {line}")
            print(f"crescent-data: benchmark data in {dest}")
            return
        root = data_dir(None)
        print(f"crescent-data: runs read {root} (eval.data_dir overrides it)")
        for rel, status in check(root):
            print(f"  {rel}: {status}")
        if any(status != "ok" for _, status in check(root)):
            print(f"crescent-data: run `{FETCH}` or `{FETCH} --from DIR`")
            sys.exit(1)
    except CrescentError as e:
        print(f"crescent-data: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
