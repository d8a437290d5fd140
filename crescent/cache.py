"""The stage table and the artefact cache: keys, entries, links, locks, the DONE marker.

A stage is a module with `run(cfg, run_dir)`, which writes its outputs and stats.json into
`run_dir/<name>/` (the runner reads no return value), and a `STAGE` declaration (`Stage`): the
config keys that determine its output, what it reads (`upstream`) and writes (`outputs`), its
version and the cache entries it keeps beside its own (`entries`: the answers stage's samples,
the evaluate stage's base-model scores). Stages are registered in `crescent.registry.STAGES`.
The runner (crescent/pipeline.py) and the stages use the same objects from here.

Wiring: a stage reads the output of its `upstream` stage, or of the last stage listed before it
in `cfg.stages` that `provides` the same (a filter between answers and finetune declares
`upstream="answers", provides="answers"`, and finetune then trains on the filter's files), or of
the stage its input key names (`finetune.input=filter`). `input_path` gives a stage the file,
and the same choice enters its cache key.

With `cache_dir` set, a stage's dir is a link to `<cache_dir>/<name>/<key>`, where the key
hashes the config that determines the output (its own keys and its upstream's key, or the
content of an explicit input file). Sweep points that share upstream settings therefore share
those outputs: a learning-rate sweep generates its questions and answers once. A lock per
entry keeps parallel sweep jobs from computing one entry twice at the same time.

Stale outputs: a stage's `version` is bumped whenever the same config would now produce
different output (extraction rules, cleaning, templates, task files). It is part of the key, so
an entry made by another version is never reused. Benchmark data (`eval.data_dir`,
`$CRESCENT_DATA` or the crescent cache) enters a key as the sha256 of the files read
(crescent/infra/data.py), never as a machine path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crescent.config import operational_defaults
from crescent.errors import CrescentError
from crescent.infra.io import atomic_write_text, hash_file, read_json, write_json
from crescent.registry import COMPONENTS, EMBEDDERS, ENGINES, STAGES

logger = logging.getLogger(__name__)

DONE = "DONE"  # written last and atomically: the entry is complete
STATS = "stats.json"  # every stage's counts, wall time and provenance
KEY_FILE = "cache_key.json"  # what an entry's key hashes, for whoever reads the cache

@dataclass(frozen=True, eq=False)
class Stage:
    """What a stage's (or one of its entries') output depends on."""

    name: str
    keys: tuple[str, ...] = ()  # config keys that determine the output
    upstream: str | None = None  # the stage or entry whose output it reads by default
    input_key: str | None = None  # config key of an explicit input (a path, or a stage's name)
    outputs: tuple[str, ...] = ()  # the files (or dirs) in its dir that later stages read
    provides: str | None = None  # the stage whose outputs it stands in for downstream (a filter)
    # Bump when the same config would now give other output (rules, cleaning, templates).
    version: int = 1
    # Benchmark files read: a config key holding a list of them, or "*" for every pinned one.
    data: str | None = None
    exclude: tuple[str, ...] = ()  # dotted keys left out of the hash (machine paths)
    # dotted key -> its value as the stage resolves it (a default that follows another key)
    resolved: dict[str, Callable[[DictConfig], Any]] = field(default_factory=dict)
    # dotted keys added after entries were made: left out of the hash while at the schema's
    # default, so that those entries (which that default reproduces) stay valid
    added: tuple[str, ...] = ()
    entries: tuple[Stage, ...] = ()  # cache entries the stage keeps beside its own
    generates: bool = False  # uses `cfg.engine`: shares the process's engine, others free it
    # Runs in every process of a multi-process job (DDP's other ranks re-run the command and
    # join it); the other stages run in rank 0 only.
    distributed: bool = False


def load_stage(name: str) -> ModuleType:
    """The stage's module, checked to declare the stage it is registered as."""
    module = STAGES.get(name)
    declared = getattr(module, "STAGE", None)
    if not isinstance(declared, Stage) or declared.name != name:
        where = getattr(module, "__name__", module)
        raise CrescentError(f"stage {name!r}: {where} declares no STAGE = Stage({name!r}, ...)")
    return module


def _declared(name: str) -> tuple[str, Stage]:
    """The stage that keeps `name` (a stage keeps itself) and the declaration of `name`."""
    if name in STAGES.names():
        return name, load_stage(name).STAGE
    for stage in STAGES.in_order():
        for entry in load_stage(stage).STAGE.entries:
            if entry.name == name:
                return stage, entry
    raise CrescentError(f"no stage or cache entry named {name!r}")


def spec(name: str) -> Stage:
    """The declaration of a stage or of an entry a stage keeps."""
    return _declared(name)[1]


def owner(name: str) -> str:
    """The stage that keeps entry `name` (a stage owns itself)."""
    return _declared(name)[0]


def provider(cfg: DictConfig, name: str) -> str | None:
    """The stage (or entry) whose output stage or entry `name` reads: the one its input key
    names, else the last stage listed before it that provides its upstream, else its upstream.
    None: it reads no stage's output (or an explicit input file)."""
    stage = spec(name)
    explicit = OmegaConf.select(cfg, stage.input_key) if stage.input_key else None
    if explicit and explicit in STAGES.names():
        return explicit
    if explicit or not stage.upstream:
        return None
    listed = list(OmegaConf.select(cfg, "stages", default=None) or [])
    me = owner(name)
    before = listed[:listed.index(me)] if me in listed else []
    for other in reversed(before):
        if (spec(other).provides or other) == stage.upstream and other != me:
            return other
    return stage.upstream


def check_wiring(cfg: DictConfig) -> None:
    """Before any stage: every listed stage (and entry) reads a stage that can feed it, listed
    before it if listed at all; an input key names another stage than its own, one that writes
    what it reads. A one-line error otherwise, instead of a loop or a late missing file."""
    listed = [str(name) for name in OmegaConf.select(cfg, "stages", default=None) or []]
    for stage in listed:
        for name in (stage, *(entry.name for entry in spec(stage).entries)):
            declared = spec(name)
            named = OmegaConf.select(cfg, declared.input_key) if declared.input_key else None
            if named and str(named) in STAGES.names():
                if str(named) == stage:
                    raise CrescentError(f"{declared.input_key}={named}: a stage cannot read its "
                                        f"own output")
                if (spec(str(named)).provides or str(named)) != declared.upstream:
                    raise CrescentError(
                        f"{declared.input_key}={named}: {stage} reads what {declared.upstream} "
                        f"writes, and {named} does not stand in for it")
            source = provider(cfg, name)
            later = owner(source) if source else None
            if later in listed and listed.index(later) > listed.index(stage):
                raise CrescentError(f"stages: {stage} reads the output of {later}, listed after "
                                    f"it: list {later} first")


def upstream_stages(cfg: DictConfig, names: list[str]) -> list[str]:
    """The stages, outside `names`, whose outputs the stages `names` read (transitively)."""
    found: list[str] = []
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        source = provider(cfg, name)
        if source is None or source in seen:
            continue
        seen.add(source)
        if owner(source) not in names and owner(source) not in found:
            found.append(owner(source))
        todo.append(source)
    return found


def input_path(cfg: DictConfig, run_dir: Path, name: str, file: str) -> Path:
    """Where stage `name` finds `file` of the stage it reads (`provider`): in the run dir."""
    source = provider(cfg, name)
    if source is None:
        raise CrescentError(f"{name}: reads no stage's output (its input is a file)")
    outputs = spec(source).outputs
    if outputs and file.split("/")[0] not in outputs:
        raise CrescentError(f"{name}: reads {file} from stage {source!r}, which writes "
                            f"{', '.join(outputs)}")
    # An entry's files are linked into its stage's dir; what is read is checked first.
    return verified(name, Path(run_dir) / owner(source) / file)


def stage_key(cfg: DictConfig, name: str) -> tuple[str, dict]:
    """The cache key of a stage's (or entry's) output, and what it hashes."""
    stage = spec(name)
    parts = {key: plain(OmegaConf.select(cfg, key)) for key in stage.keys}
    for key, value_of in stage.resolved.items():
        _set(parts, key, value_of(cfg))
    explicit = OmegaConf.select(cfg, stage.input_key) if stage.input_key else None
    source = provider(cfg, name)
    if source is not None:
        # A stage named as the input is the one a listed stage would be: the same key.
        if stage.input_key:
            _replace(parts, stage.input_key, None)
        parts["upstream"] = stage_key(cfg, source)[0]
    elif explicit:  # what counts is the input's content, not where it lies
        _drop(parts, stage.input_key)
        parts["input_sha256"] = content_hash(Path(explicit), stage.input_key)
    if stage.data:
        parts["benchmarks"] = _data_identity(cfg, stage.data)
    for key in stage.exclude:
        _drop(parts, key)
    if name in STAGES.names():  # a plug-in stage's own settings
        where = STAGES.options_key_of(name)
        own = STAGES.options(name, OmegaConf.select(cfg, where, default=None), where)
        if own:
            parts["stage_options"] = {name: own}
    for registry in COMPONENTS:  # a component's own settings, at their defaults where not given
        node, last = _parent(parts, registry.options_key)
        if node is not None and last in node:
            node[last] = registry.options(OmegaConf.select(cfg, registry.key), node[last])
            if not node[last]:
                del node[last]  # none: the key of a component without options, as before them
    for key, default in operational_defaults(cfg).items():
        _replace(parts, key, default)  # outputs do not depend on them: hashed at the default
    for registry, before in FLAT_BEFORE_OPTIONS.items():
        _as_flat(parts, registry, before)
    for key in stage.added:
        node, last = _parent(parts, key)
        if node is not None and node.get(last) == plain(OmegaConf.select(_schema(), key)):
            _drop(parts, key)
        if parts.get(key.split(".")[0]) == {}:  # a group of added keys, all at their defaults
            del parts[key.split(".")[0]]
    parts["version"] = stage.version
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(),
                             digest_size=8)
    return digest.hexdigest(), parts


# Until engines and embedders had options (VLLMOptions, OpenAIOptions, MinHashOptions,
# SelfOptions in crescent/options.py), their settings were flat fields of `engine` and `dedup`,
# each hashed, at these defaults where not set. Keys still hash that layout, so every entry made
# then stays valid: a built-in's options in place of those fields, the others at these values.
FLAT_BEFORE_OPTIONS = {
    ENGINES: {"enforce_eager": True, "tensor_parallel_size": 1, "data_parallel_size": 1,
              "ray_address": None, "gpu_memory_utilization": 0.9, "cpu_kvcache_gib": 4,
              "endpoints": [], "served_model": None, "concurrency": 32, "max_retries": 5,
              "retry_backoff_s": 2.0, "request_timeout_s": 600.0},
    EMBEDDERS: {"num_perm": 128, "shingle": 1, "depth": 0.5}}


def _as_flat(parts: dict, registry, before: dict) -> None:
    group, name_key = registry.key.split(".")
    node = parts.get(group)
    if not isinstance(node, dict):
        return
    options = node.pop("options", {})
    builtin = registry.builtin(node.get(name_key))  # its options were these fields
    for key, value in before.items():
        moved = options.pop(key, None) if builtin else None
        if node.get(key) is None:  # else an old name, not moved yet (crescent.config.rename)
            node[key] = value if moved is None else moved
    if options:  # a plug-in's own, nested as they always were
        node["options"] = options


@functools.cache
def _schema() -> DictConfig:
    """Every key at its default (crescent/config.py)."""
    from crescent.config import Config

    return OmegaConf.structured(Config)


def plain(value):
    """A config node as plain Python (resolved), a plain value as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _set(parts: dict, dotted: str, value) -> None:
    node, last = _parent(parts, dotted)
    if node is not None:
        node[last] = value


def _replace(parts: dict, dotted: str, value) -> None:
    node, last = _parent(parts, dotted)
    if node is not None and last in node:
        node[last] = value


def _drop(parts: dict, dotted: str) -> None:
    node, last = _parent(parts, dotted)
    if node is not None:
        node.pop(last, None)


def _parent(parts: dict, dotted: str) -> tuple[dict | None, str]:
    """The dict that holds a dotted key's last part (None when the path is not there); a
    stage's dotted `keys` are held as they are (`{"voting.rule": ...}`)."""
    if dotted in parts:
        return parts, dotted
    *path, last = dotted.split(".")
    node = parts
    for step in path:
        node = node.get(step) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), last


def _data_identity(cfg: DictConfig, which: str) -> dict[str, str]:
    from crescent.infra import data

    rels = data.PINS if which == "*" else (OmegaConf.select(cfg, which) or [])
    return data.identity(OmegaConf.select(cfg, "eval.data_dir", default=None), list(rels))


def content_hash(path: Path, what: str) -> str:
    """sha256 of a file, or of every file (name and bytes) under a directory."""
    if not path.exists():
        raise CrescentError(f"{what}: {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
        hash_file(file, digest)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- entries


def is_done(where: Path) -> bool:
    return (Path(where) / DONE).exists()


def stamp(where: Path, cfg: DictConfig, stage: Stage, **more) -> dict:
    """Record in a stage dir's stats what made it (its version and key: what reuse checks)
    and `more`; the stats as written."""
    stats = read_json(Path(where) / STATS)
    stats.update(stage_version=stage.version, key=stage_key(cfg, stage.name)[0], **more)
    write_json(Path(where) / STATS, stats)
    return stats


def mark_done(where: Path) -> None:
    """The DONE marker, atomically and last: what the dir holds is complete. It records every
    file the dir holds (size and sha256: 0.7 s a GB here), so that `damage` can tell an entry
    that lost or changed a file since (links to other entries are theirs to check)."""
    done = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": fingerprints(where)}
    atomic_write_text(Path(where) / DONE, json.dumps(done, indent=1, sort_keys=True) + "\n")


def fingerprints(where: Path) -> dict[str, dict]:
    """Size and sha256 of every file under `where` (what DONE records), for a stage that
    records what it wrote before its DONE exists (the finetune stage's model)."""
    return {rel: _fingerprint(Path(where) / rel) for rel in _files(Path(where))}


def differs(where: Path, recorded: dict[str, dict]) -> str | None:
    """How the files under `where` differ from `recorded` (`fingerprints`), or None."""
    for rel, was in sorted(recorded.items()):
        path = Path(where) / rel
        if not path.is_file():
            return f"{rel} is missing"
        if was.get("sha256") is None:  # recorded by size only (before every file was hashed)
            _warn_size_only(where)
        now = _fingerprint(path, hash_it=was.get("sha256") is not None)
        if now["bytes"] != was["bytes"]:
            return f"{rel} holds {now['bytes']} bytes, {was['bytes']} when it was written"
        if now["sha256"] != was.get("sha256"):
            return f"{rel} changed since it was written"
    return None


def damage(where: Path) -> str | None:
    """What is wrong with a finished dir's files, or None when they are as DONE recorded
    them. A DONE that does not parse (or records no files: written before DONE did) vouches
    for nothing: the dir counts as damaged, never as finished."""
    where = Path(where)
    try:
        recorded = json.loads((where / DONE).read_text(encoding="utf-8"))["files"]
        if not isinstance(recorded, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, OSError):
        return f"its {DONE} marker does not parse as the file list Crescent writes"
    return differs(where, recorded)


def check_intact(name: str, where: Path) -> None:
    """A one-line error naming the damaged dir, what is wrong and how to rebuild it. Hashed
    once a process while no file's size or time changes (a reader after the runner does not
    hash a GB twice)."""
    where = Path(where).resolve()
    problem = _damage_once(str(where), _stamp(where))
    if problem is not None:
        raise damaged(name, where, problem)


def damaged(name: str, where: Path, problem: str) -> CrescentError:
    """The one line for a damaged dir: which, what is wrong, and the command that rebuilds it."""
    where = Path(where).resolve()
    return CrescentError(f"{name}: {where} is damaged: {problem}; to rebuild it, delete it "
                         f"(rm -r {where}) and run the same command again")


@functools.lru_cache(maxsize=256)
def _damage_once(where: str, stamp: tuple) -> str | None:
    return damage(Path(where))


def _stamp(where: Path) -> tuple:
    """Size and modification time of DONE and of every file: what `_damage_once` keys on."""
    stats = ((rel, (where / rel).stat()) for rel in [DONE, *_files(where)]
             if (where / rel).exists())
    return tuple((rel, s.st_size, s.st_mtime_ns) for rel, s in stats)


@functools.cache
def _warn_size_only(where: Path) -> None:
    logger.warning("crescent: warning: %s was checked by size only: it was made before Crescent "
                   "hashed every file; delete it to rebuild it verified", Path(where).resolve())


def verified(name: str, path: Path) -> Path:
    """`path` (a file or dir another stage wrote) after checking the finished dir that holds it
    (the nearest parent with a DONE marker, links followed) against its DONE: every reader
    of an entry reads through here. A path in no finished dir is returned as it is."""
    real = Path(path).resolve()
    for parent in (real, *real.parents) if real.is_dir() else real.parents:
        if (parent / DONE).exists():
            check_intact(name, parent)
            break
    return Path(path)


def _files(where: Path) -> list[str]:
    """Regular files under `where`, relative; links, DONE and lock files are not its own."""
    found = []
    for root, dirs, names in os.walk(where):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in names:
            path = Path(root) / name
            if name != DONE and not name.endswith(".lock") and not path.is_symlink():
                found.append(str(path.relative_to(where)))
    return sorted(found)


def _fingerprint(path: Path, hash_it: bool = True) -> dict:
    return {"bytes": path.stat().st_size,
            "sha256": content_hash(path, str(path)) if hash_it else None}


@dataclass
class Entry:
    """One cache entry: `<cache_dir>/<name>/<key>`, its key file, lock and DONE marker."""

    name: str
    dir: Path
    parts: dict  # what the key hashes

    @property
    def done(self) -> bool:
        return is_done(self.dir)

    def open(self) -> Entry:
        """Create the entry's dir and record what its key hashes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / KEY_FILE, self.parts)
        return self

    @contextmanager
    def locked(self, what: str):
        """Hold the entry's lock; a job that finds it held waits for the other."""
        from filelock import FileLock, Timeout

        lock = FileLock(f"{self.dir}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("crescent: %s: another job is running it in %s, waiting", what, self.dir)
            lock.acquire()
        try:
            yield self
        finally:
            lock.release()

    def finish(self) -> None:
        mark_done(self.dir)

    def reuse_or_build(self, what: str, build: Callable[[Path], Any],
                       current: Callable[[Path], bool] = lambda where: True) -> Any:
        """Under the entry's lock: None when it is finished, its files as DONE recorded them,
        and `current` (it still holds this config's output); else what `build(dir)` returns,
        once it has filled the dir and DONE seals it. A job that finds the lock held waits."""
        with self.open().locked(what):
            if self.done:
                check_intact(what, self.dir)
                if current(self.dir):
                    return None
                logger.warning("crescent: %s: %s holds older output: building it again", what,
                               self.dir)
                (self.dir / DONE).unlink()
            built = build(self.dir)
            self.finish()
            return built


def entry(cfg: DictConfig, run_dir: Path, name: str) -> Entry | None:
    """Where stage or entry `name` of this config lives in the cache; None when the cache is
    off, when the run dir holds the stage as a real dir (made with the cache off), or, for an
    entry a stage keeps, when that stage's dir is not a cache link: its entries then live in
    the stage dir itself."""
    cache = OmegaConf.select(cfg, "cache_dir", default=None)
    stage = Path(run_dir) / owner(name)
    in_cache = stage.is_symlink() if name != stage.name else not stage.is_dir() or stage.is_symlink()
    if not cache or not in_cache:
        return None
    key, parts = stage_key(cfg, name)
    return Entry(name, Path(cache).resolve() / name / key, parts)


def link(out: Path, target: Path) -> None:
    """Point `out` (a run's stage dir, or a file or dir in it) at a cache entry's `target`,
    relatively, so the tree can move."""
    if out.is_symlink() and out.resolve() == target.resolve():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.link")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(os.path.relpath(target, out.parent.resolve()), tmp)
    os.replace(tmp, out)
