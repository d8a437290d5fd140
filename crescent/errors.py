"""The error a user can fix: printed as one line with exit code 1, never a traceback."""

from __future__ import annotations

import sys


class CrescentError(Exception):
    """An error the user can fix: printed as one line, exit code 1, no traceback."""


def crescent_cause(e: BaseException) -> CrescentError | None:
    """The CrescentError that `e` is or wraps (OmegaConf chains a resolver's as the context)."""
    while e is not None and not isinstance(e, CrescentError):
        e = e.__cause__ or e.__context__
    return e


def fail(message: str, code: int = 1) -> None:
    """The one line a user is owed, and the exit code (130: interrupted, as a shell reports
    Ctrl-C)."""
    print(f"crescent: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
