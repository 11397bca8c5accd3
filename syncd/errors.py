"""The errors a user can fix, each mapped to one exit code (cli.py turns them into one stderr line)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_CONFIG = 2
EXIT_BUCKET = 3
EXIT_CREDENTIALS = 4
EXIT_LOCKED = 5
EXIT_INTERNAL = 70
EXIT_UNAVAILABLE = 75
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141  # as a shell reports a command ended by SIGPIPE (`syncd versions ... | head`)


class SyncdError(Exception):
    """Base for errors the user can fix; the message says what is wrong and how to fix it."""

    exit_code = EXIT_INTERNAL


class ConfigError(SyncdError):
    """Bad config file, key, value, or command-line usage."""

    exit_code = EXIT_CONFIG


class BucketError(SyncdError):
    """The bucket cannot be used safely: someone else's, no permission, or not provably private."""

    exit_code = EXIT_BUCKET


class CredentialsError(SyncdError):
    """The server rejected the credentials."""

    exit_code = EXIT_CREDENTIALS


class LockedError(SyncdError):
    """Another syncd process holds this state."""

    exit_code = EXIT_LOCKED


class UnavailableError(SyncdError):
    """The server stayed unreachable longer than we were allowed to wait."""

    exit_code = EXIT_UNAVAILABLE


class RequestFailedError(UnavailableError):
    """The server answers, but kept failing a request syncd cannot go on without (a listing page, a bucket
    check): 75 as for an outage, for a later run may well get it through."""


def first_syncd_error(exc: BaseException) -> SyncdError | None:
    """The first of our own errors in exc (an ExceptionGroup from a TaskGroup included), else None."""
    if isinstance(exc, SyncdError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_syncd_error(inner)
            if found is not None:
                return found
    return None
