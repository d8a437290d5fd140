"""Crash-safe file I/O: atomic whole-file writes and append-only JSON Lines that survive a kill.

Every OSError raised here names its file (a full disk raises ENOSPC on close, with no filename
of its own), so the CLI prints it in one line; files get the process umask's permissions, as
`open` would give them, so a cache shared by a group stays readable to the group."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crescent.errors import CrescentError

if TYPE_CHECKING:  # typing.Self is Python 3.11's; annotations are not evaluated at run time
    from typing_extensions import Self


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
FILE_MODE = 0o666 & ~UMASK  # what `open` gives a new file; mkstemp's own is 0600
DIR_MODE = 0o777 & ~UMASK  # what `mkdir` gives a new dir; mkdtemp's own is 0700


def umask_modes(root: Path) -> None:
    """Give a tree another library wrote (safetensors writes its files 0600) the modes `open`
    and `mkdir` would have given it."""
    root = Path(root)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)


@contextmanager
def naming(path: Path):
    """Re-raise an OSError that names no file as one naming `path`."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with naming(path):
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def hash_file(path: Path, digest=None):
    """`digest` (a new sha256 by default) fed the file's bytes, a MiB at a time."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """JSON Lines, one row a line, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CrescentError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise CrescentError(f"{path}: not UTF-8 text") from None


def read_jsonl(path: Path) -> Iterator[dict]:
    """Yield one object per line; a bad line is an error naming `file:line`."""
    return (obj for _, obj in numbered_jsonl(path))


def numbered_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) per non-blank line, for errors that name `file:line`."""
    path = Path(path)
    if not path.is_file():
        what = "a directory, not a JSON Lines file" if path.is_dir() else "no such file"
        raise CrescentError(f"{path}: {what}")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CrescentError(f"{path}:{lineno}: not UTF-8 text (byte {e.start + 1} of "
                                    f"the line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CrescentError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
            if not isinstance(obj, dict):
                raise CrescentError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj


def resume_jsonl(path: Path) -> list[dict]:
    """The records of a progress file that a killed run may have left: none if there is no
    file, and a last line cut off mid-write is dropped (its record is redone), not an error."""
    path = Path(path)
    if not path.exists():
        return []
    drop_partial_tail(path)
    return list(read_jsonl(path))


def drop_partial_tail(path: Path) -> None:
    """Cut a last line that has no newline: a write the kill interrupted."""
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with path.open("r+b") as f:
            f.truncate(keep)


class JsonlAppender:
    """Append-and-flush JSON Lines writer for progress that must survive a kill.

    Opening repairs the file first: a kill can leave a last line without its newline, which
    is cut off so that a resumed run re-does that record instead of trusting half of it.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():  # not a device or a pipe: those have no tail to repair
            drop_partial_tail(self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, obj: dict) -> None:
        self.write_many([obj])

    def write_many(self, objs: Iterable[dict]) -> None:
        lines = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)
        if lines:
            with naming(self.path):
                self._file.write(lines)
                self._file.flush()
                os.fsync(self._file.fileno())

    def close(self) -> None:
        with naming(self.path):
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
