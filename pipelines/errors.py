"""The errors a user can cause, and how any of them reads: one line naming the culprit and the fix.

UserError (and ConfigError) belong to pipelines/; models/ and datamodules/ own theirs (ModelError, DataError),
since they import nothing from here. Every such type carries an `exit_code`, which is how the CLI recognises
them all: it prints the one line without a traceback and exits with that code (2; 1 for a lost distributed run).
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the message names the culprit and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: multi-line messages from libraries are folded here.
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """A config that does not compose or does not match its schema."""


class Stopped(Exception):
    """A run stopped from outside before it finished, not by an error: a sweep's scheduler ended its trial. Its
    MLflow run ends KILLED."""


def exit_code(error: BaseException):
    """The exit code of an error a user can cause (UserError, ModelError, DataError, ...), else None."""
    code = getattr(type(error), "exit_code", None)
    return code if isinstance(code, int) else None


def first_line(text) -> str:
    """The first non-blank line of a message, stripped (libraries' errors run to many lines); for an error with
    no message, its type's name."""
    line = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    return line or (type(text).__name__ if isinstance(text, BaseException) else "")


def last_line(error: BaseException) -> str:
    """'TypeName: last non-blank line' of an error: where a chained or remote traceback states its cause."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def disk_full(error: BaseException):
    """One line for an error caused by a full disk anywhere in its chain (an OSError ENOSPC, SQLite's 'database or
    disk is full'), else None. Every write dlpipe makes is atomic, so what is on disk is whole: say where to resume."""
    import errno

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        where = getattr(error, "filename", None)
        if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "disk is full" in str(error) \
                or "No space left on device" in str(error):
            at = f" writing {where}" if where else ""
            return (f"no space left on device{at}; the run is marked FAILED and every file written so far is whole: "
                    f"free some space, then rerun with resume=last to continue from the last checkpoint")
        error = error.__cause__ or error.__context__
    return None
