"""A study's record in the repository: what a session on a new machine must not lose.

A study can span sessions, and a session may start on a new machine whose cache is empty: the
hours of generation and the scored runs would be lost with it. A study's run.sh therefore
restores its record before its first step and saves it after each:

  RECORD/cache/<stage>/<key>.tar.xz   each of the study's cache entries but the fine-tunes'
                               (its questions, the programs drawn, the votes, the scorings),
                               written once it is finished (an unfinished one as
                               <key>.partial.tar.xz, rewritten at each save until then): each
                               stage resumes from them as from its own cache;
  RECORD/runs/<run>/           each scored run (its evaluate entry is done), links followed,
                               without the fine-tune's weights and checkpoints: what
                               crescent-report reads, and the sign for run.sh that the run is
                               done (its fine-tune, which the record does not keep, is not
                               trained again).

Restoring never replaces an entry the cache already has (it may be further along). Each
archive is written once finished, so the repository holds each entry once.

    python experiments/study_record.py save    RUNS_DIR RECORD_DIR [--cache outputs/cache]
    python experiments/study_record.py restore RECORD_DIR [--cache outputs/cache]
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tarfile
from pathlib import Path

ARCHIVES = "cache"
FINISHED, PARTIAL = ".tar.xz", ".partial.tar.xz"
NOT_KEPT = ("finetune",)  # its weights are large, and a scored run no longer needs them
# A scored run's copy: of most stages what the report reads (their stats) and the markers; of
# the scorings their results and sample logs too, without lm-eval's request cache.
STAGE_FILES = {"stats.json", "DONE", "cache_key.json"}
SCORING = {"evaluate", "audit"}


def run_dirs(runs: Path) -> list[Path]:
    """Every run under `runs`: a dir with stage links and a `.hydra` config."""
    return sorted(p.parent for p in runs.rglob(".hydra") if p.is_dir())


def entry_of(path: Path, cache: Path) -> Path | None:
    """The cache entry (`<cache>/<stage>/<key>`) that `path` lies in, or None."""
    try:
        parts = path.resolve().relative_to(cache.resolve()).parts
    except ValueError:
        return None
    return Path(*parts[:2]) if len(parts) >= 2 else None


def study_entries(runs: Path, cache: Path) -> set[Path]:
    """The cache entries the runs' stage dirs link to, and the entries linked from those (the
    samples beside the vote, the base's scores beside the fine-tune's), fine-tunes left out."""
    found: set[Path] = set()
    for run in run_dirs(runs):
        for stage in run.iterdir():
            entry = entry_of(stage, cache) if stage.is_symlink() else None
            if entry is None or entry.parts[0] in NOT_KEPT:
                continue
            found.add(entry)
            for inner in (cache / entry).rglob("*"):
                linked = entry_of(inner, cache) if inner.is_symlink() else None
                if linked is not None and linked.parts[0] not in NOT_KEPT:
                    found.add(linked)
    return found


def scored(run: Path) -> bool:
    return (run / "evaluate" / "DONE").is_file()


def _left_out(run: Path, at: str, names: list[str]) -> list[str]:
    """What a run's copy leaves out of the dir `at` (copytree's `ignore`)."""
    where = Path(at).relative_to(run).parts
    if not where or where[0] == ".hydra":
        return []
    if where[0] in SCORING:
        return [n for n in names if n.endswith(".db") or (len(where) == 1 and n == "tasks")]
    return [n for n in names if n not in STAGE_FILES]


def _archive(entry: Path, cache: Path, record: Path) -> str | None:
    """Write `entry`'s archive unless its finished one is there; what was written, or None."""
    base = record / ARCHIVES / entry
    finished, partial = base.with_name(base.name + FINISHED), base.with_name(base.name + PARTIAL)
    if finished.is_file():
        return None
    done = (cache / entry / "DONE").is_file()
    target = finished if done else partial
    target.parent.mkdir(parents=True, exist_ok=True)
    writing = target.with_name(target.name + ".writing")
    with tarfile.open(writing, "w:xz") as archive:
        archive.add(cache / entry, arcname=str(entry),
                    filter=lambda info: None if info.name.endswith(".lock") else info)
    writing.replace(target)
    if done:
        partial.unlink(missing_ok=True)
    return f"{entry}{'' if done else ' (unfinished)'}"


def save(runs: Path, record: Path, cache: Path) -> None:
    written = [w for entry in sorted(study_entries(runs, cache))
               if (w := _archive(entry, cache, record)) is not None]
    copied = []
    for run in run_dirs(runs):
        dest = record / "runs" / run.relative_to(runs)
        if scored(run) and not scored(dest):
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(run, dest, symlinks=False, ignore=functools.partial(_left_out, run))
            copied.append(str(run.relative_to(runs)))
    size = sum(p.stat().st_size for p in (record / ARCHIVES).rglob("*.tar.xz"))
    print(f"record: cache entries written: {', '.join(written) or 'none'} "
          f"({size / 1e6:.1f} MB in all); runs newly recorded: {', '.join(copied) or 'none'}")


def restore(record: Path, cache: Path) -> None:
    archives = sorted((record / ARCHIVES).glob(f"*/*{FINISHED}"))
    found = {}  # entry -> its archive, a finished one before an unfinished one
    for path in archives:
        name = path.name.removesuffix(PARTIAL).removesuffix(FINISHED)
        entry = Path(path.parent.name, name)
        if path.name.endswith(PARTIAL) and entry in found:
            continue
        found[entry] = path
    restored = []
    for entry, path in sorted(found.items()):
        if (cache / entry).exists():
            continue  # the cache's own copy may be further along
        with tarfile.open(path) as archive:
            archive.extractall(cache, filter="tar")
        restored.append(str(entry))
    print(f"record: {len(restored)} of {len(found)} cache entries restored into {cache}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("save", "restore"))
    parser.add_argument("paths", nargs="+", type=Path, help="save: RUNS_DIR RECORD_DIR; "
                        "restore: RECORD_DIR")
    parser.add_argument("--cache", type=Path, default=Path("outputs/cache"))
    args = parser.parse_args()
    if args.action == "save":
        save(*args.paths, args.cache)
    else:
        restore(*args.paths, args.cache)


if __name__ == "__main__":
    main()
