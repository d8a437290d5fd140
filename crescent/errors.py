"""The error a user can fix: printed as one line with exit code 1, never a traceback."""

from __future__ import annotations

import sys


class CrescentError(Exception):
    """An error the user can fix: printed as one line, exit code 1, no traceback."""


def user_mistake(e: BaseException) -> CrescentError | None:
    """The CrescentError that `e` is, or that OmegaConf wrapped while resolving one of our
    resolvers (`${data:...}`: it chains ours as the context); None for anything else (a bug,
    whose traceback is kept)."""
    from omegaconf.errors import InterpolationResolutionError

    if not isinstance(e, (CrescentError, InterpolationResolutionError)):
        return None
    while e is not None and not isinstance(e, CrescentError):
        e = e.__cause__ or e.__context__
    return e


def fail(message: str, code: int = 1) -> None:
    """The one line a user is owed, and the exit code (130: interrupted, as a shell reports
    Ctrl-C)."""
    print(f"crescent: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def did_you_mean(name: str, known) -> str:
    """" (did you mean X?)" for the known name nearest `name`, or "" when none is near."""
    import difflib

    near = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""
