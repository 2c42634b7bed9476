"""Errors a user can act on: each is reported as one line and an exit status, never a
traceback. Imports nothing.
"""


class RunError(Exception):
    """A failure the user can act on: reported as one line, exit status 1."""

    status = 1


class LostError(BaseException):
    """A failure the user can act on that must pass through a library's `except Exception`
    (Optuna records a failed trial in the very database that was lost): one line, exit 1."""

    status = 1


class UsageError(RunError):
    """Flags that cannot work with the data they were given: one line, exit status 2."""

    status = 2


def one_line(err):
    """An exception as one line, its type and the first line of its message, for an error
    that must keep its cause."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
