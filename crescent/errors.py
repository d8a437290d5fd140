"""The error a user can fix: printed as one line with exit code 1, never a traceback."""


class CrescentError(Exception):
    """An error the user can fix: printed as one line, exit code 1, no traceback."""
