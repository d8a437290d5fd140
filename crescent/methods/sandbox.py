"""The sandbox: the only way Crescent runs model-written code.

Each program runs in a child Python process (`python -s -B`: no user site, no bytecode written;
not `-I`, which would ignore the environment's PYTHONHASHSEED, and with it the order of a set of
strings would change from run to run) with
- its own fresh working directory, removed afterwards;
- an environment of its own (PATH, LANG, HOME = that directory, PYTHONHASHSEED=0): no API
  keys, no tokens, no PYTHONPATH; the working directory is not on its import path;
- resource limits: CPU seconds, address space, file size, no core files;
- a wall-clock timeout, after which its whole process group is killed;
- its output written to files capped by the file-size limit, and read back up to a bound;
- no network: a new network namespace (`unshare -rn`) where the kernel allows one, and in every
  case an audit hook (PEP 578) installed before the program starts, which refuses sockets,
  processes (fork, exec, system, spawn, subprocess), ctypes, writes outside its directory and
  reads outside it and the interpreter's own library folders (so the cache, the outputs and the
  home directory are out of reach).

`run_python(code, stdin)` returns an `Outcome`: `ok`, `error` (an exception, a non-zero exit),
`timeout`, `memory` or `output_limit`, with the output, the exit code and the seconds it took.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # wall-clock seconds before the process group is killed
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 1024  # address space (RLIMIT_AS): a 10 GB allocation fails at once
    file_mb: int = 16  # the largest file it may write, its output included (RLIMIT_FSIZE)
    output_bytes: int = 1 << 16  # stdout and stderr each, as read back


@dataclass
class Outcome:
    status: str  # ok, error, timeout, memory, output_limit
    stdout: str
    stderr: str
    returncode: int | None
    seconds: float
    isolated_network: bool  # ran in a network namespace of its own

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# Runs in the child before the program: the audit hook, then the program as __main__. The
# hook cannot be removed once added (PEP 578), so the program runs under it whatever it does.
_PREAMBLE = r"""
import json, os, resource, sys
if sys.path and sys.path[0] == "":  # `-c` puts the working directory first: a program's own
    del sys.path[0]                  # files shadow no module it imports
root, readable, limits = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
source = open(os.path.join(root, "program.py"), encoding="utf-8").read()
WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

def inside(path, dirs):
    try:
        path = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return any(path == d or path.startswith(d + os.sep) for d in dirs)

REFUSED = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "os.forkpty", "os.system", "os.kill", "os.killpg", "ctypes.", "pty.", "os.startfile",
           "resource.setrlimit", "sys.addaudithook", "os.putenv", "os.unsetenv", "mmap.")
PATHS = {"os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.rename": 0, "os.chmod": 0,
         "os.chown": 0, "os.symlink": 0, "os.link": 0, "os.truncate": 0, "os.utime": 0,
         "shutil.rmtree": 0, "shutil.move": 0, "shutil.copyfile": 1, "os.chdir": None,
         "os.listdir": None, "os.scandir": None}

def hook(event, args):
    if event.startswith(REFUSED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        writes = bool(flags & WRITE) or any(c in str(mode or "") for c in "wax+")
        if not inside(path, [root] if writes else [root, *readable]):
            raise PermissionError(f"sandbox: {path} is outside the sandbox")
    elif event in PATHS:
        where = PATHS[event]
        dirs = [root] if where is not None else [root, *readable]
        for path in (args[where:where + 1] if where is not None else args[:1]):
            if isinstance(path, (str, bytes, os.PathLike)) and not inside(path, dirs):
                raise PermissionError(f"sandbox: {os.fsdecode(path)} is outside the sandbox")

sys.addaudithook(hook)
sys.argv = ["program.py"]
exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})
"""


def run_python(code: str, stdin: str = "", limits: Limits = Limits()) -> Outcome:
    """Run `code` as a Python program in the sandbox, `stdin` as its standard input."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="crescent-sandbox-") as tmp:
        root = Path(tmp) / "work"  # the program's directory; its output lies beside it
        root.mkdir()
        (root / "program.py").write_text(code, encoding="utf-8")
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        isolated = network_namespace() is not None
        command = [*(network_namespace() or []), _interpreter(), "-s", "-B", "-c", _PREAMBLE,
                   str(root.resolve()), json.dumps(_readable()), json.dumps(_rlimits(limits))]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(command, cwd=root, env=_environment(root), stdout=stdout,
                                    stderr=stderr, stdin=subprocess.PIPE,
                                    start_new_session=True)
            try:
                proc.communicate(stdin.encode(), timeout=limits.wall_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
        stdout_text, stderr_text = _head(out, limits.output_bytes), _head(err, limits.output_bytes)
        status = _status(proc.returncode, timed_out, stderr_text, limits,
                         max(out.stat().st_size, err.stat().st_size))
        return Outcome(status, stdout_text, stderr_text, None if timed_out else proc.returncode,
                       round(time.time() - started, 3), isolated)


# What `run_calls` runs: the program, then each call under a timer of CPU time, its prints
# swallowed; one JSON line of results on stdout.
_CALLS = r"""
import contextlib, hashlib, io, json, random, re, signal
random.seed(0)  # a program that draws at random returns the same in every run
PROGRAM, CALLS, CALL_S, REPR_CHARS = {program!r}, {calls!r}, {call_s!r}, {repr_chars!r}

def expired(signum, frame):
    raise TimeoutError

signal.signal(signal.SIGPROF, expired)
space, results, loaded = {{"__name__": "solution"}}, [], True
with contextlib.redirect_stdout(io.StringIO()):
    try:
        exec(compile(PROGRAM, "solution.py", "exec"), space)
    except BaseException:
        loaded = False
    for call in CALLS if loaded else ():
        signal.setitimer(signal.ITIMER_PROF, CALL_S)  # CPU time: a busy machine delays, not fails
        try:
            shown = repr(eval(call, space))
            # a function's or an object's repr says where it lies, not what it is: no value
            status, digest = (("opaque", "") if re.search(" at 0x[0-9a-fA-F]+", shown)
                              else ("ok", hashlib.sha256(shown.encode()).hexdigest()))
            results.append((status, digest, shown[:REPR_CHARS]))
        except TimeoutError:
            results.append(("timeout", "", ""))
        except BaseException as e:
            results.append(("error", type(e).__name__, ""))
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
print(json.dumps({{"loaded": loaded, "results": results}}))
"""


def run_calls(program: str, calls, call_s: float, repr_chars: int, limits: Limits
              ) -> tuple[Outcome, dict | None]:
    """Run `program`, then evaluate each of `calls` (Python expressions) in its namespace,
    each under a timer of `call_s` CPU seconds (so a loaded machine times out no call; one that
    waits is bounded by `limits.wall_s`): the outcome, and {"loaded": whether the program ran,
    "results": per call ["ok", sha256 of its repr, the repr's first `repr_chars`], ["opaque",
    "", the repr's head] (a value whose repr shows only its memory address: another run, or
    another program, would show another), ["error", exception name, ""] or ["timeout", "",
    ""]}, or None when the run itself died."""
    outcome = run_python(_CALLS.format(program=program, calls=list(calls), call_s=call_s,
                                       repr_chars=repr_chars), limits=limits)
    last = outcome.stdout.strip().splitlines()[-1:] if outcome.ok else []
    try:
        return outcome, json.loads(last[0])
    except (IndexError, json.JSONDecodeError):
        return outcome, None


def _status(returncode: int, timed_out: bool, stderr: str, limits: Limits, written: int) -> str:
    if timed_out or returncode == -signal.SIGXCPU or returncode == -signal.SIGKILL:
        return "timeout"
    if returncode == -signal.SIGXFSZ or written >= limits.file_mb << 20:
        return "output_limit"
    if "MemoryError" in stderr:
        return "memory"
    return "ok" if returncode == 0 else "error"


def _rlimits(limits: Limits) -> dict[str, int]:
    """The resource limits the child sets on itself before the program starts (and the audit
    hook then keeps it from raising): CPU seconds, address space, file size, no core files."""
    return {"RLIMIT_CPU": limits.cpu_s, "RLIMIT_AS": limits.memory_mb << 20,
            "RLIMIT_FSIZE": limits.file_mb << 20, "RLIMIT_CORE": 0}


def _kill_group(proc: subprocess.Popen) -> None:
    """The program and anything it started: its session's process group, killed."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _head(path: Path, limit: int) -> str:
    with path.open("rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _environment(root: Path) -> dict[str, str]:
    """Nothing of the parent's environment but a PATH and a locale: no keys, no tokens; the
    hash seed fixed, so what a program returns does not hang on the run's string hashes."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(root),
            "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}


@functools.cache
def _interpreter() -> str:
    """The base interpreter (a virtual environment's python is a link to it)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


@functools.cache
def _readable() -> list[str]:
    """Folders the program may read besides its own: the interpreter's standard library (its
    prefix's lib folder), and the time zone database."""
    import sysconfig

    dirs = {sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})[k]
            for k in ("stdlib", "platstdlib")}
    dirs |= {"/usr/share/zoneinfo", "/etc/localtime", "/dev/null", "/dev/urandom"}
    return sorted(os.path.realpath(d) for d in dirs)


@functools.cache
def network_namespace() -> list[str] | None:
    """`unshare` with a user and a network namespace of its own, where this kernel allows it
    (checked once a process); None elsewhere: the audit hook still refuses sockets."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    command = [unshare, "--user", "--map-root-user", "--net"]
    try:
        ok = subprocess.run([*command, "true"], capture_output=True, timeout=10,
                            check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return command if ok else None
