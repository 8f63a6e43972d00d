"""Error hierarchy: every error the user can see carries its exit code and a sentence that says what to do.

Exit codes follow sysexits(3):

====  ==================  ==========================================================
code  name                meaning
====  ==================  ==========================================================
0     OK                  everything done
64    EX_USAGE            wrong command line
65    EX_DATAERR          verify found differences between source and destination
69    EX_UNAVAILABLE      a server could not be reached, or TLS failed
70    EX_SOFTWARE         internal error (a bug: please report it)
74    EX_IOERR            the state database could not be read or written (disk full, I/O error)
75    EX_TEMPFAIL         the pass finished, but some messages failed or it is not proven yet; or locked
77    EX_NOPERM           authentication failed
78    EX_CONFIG           the configuration is invalid
====  ==================  ==========================================================
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 64
    DIFFERENCES = 65
    UNAVAILABLE = 69
    SOFTWARE = 70
    IOERR = 74
    TEMPFAIL = 75
    NOPERM = 77
    CONFIG = 78


class MailmirrorError(Exception):
    """Base of every error shown to the user as one clear sentence (no traceback)."""

    exit_code: ExitCode = ExitCode.SOFTWARE

    def __init__(self, message: str, *, account: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.account = account  # the config name of the account concerned, when one is (for metrics)

    def __str__(self) -> str:
        return self.message


class ConfigError(MailmirrorError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = ExitCode.CONFIG


class UsageError(MailmirrorError):
    exit_code = ExitCode.USAGE


class StateStorageError(MailmirrorError):
    """The state database could not be written or read (disk full, I/O error, corrupt file): an error of
    the machine, not of mailmirror; what was committed before it is safe."""

    exit_code = ExitCode.IOERR


class ConnectionFailure(MailmirrorError):
    """A server could not be reached, the TLS handshake or certificate check failed, or the link dropped."""

    exit_code = ExitCode.UNAVAILABLE


class Throttled(ConnectionFailure):
    """The server asked to slow down ([THROTTLED], [UNAVAILABLE], "Server Unavailable"): retried later."""


class AuthenticationFailure(MailmirrorError):
    """The server rejected the credentials of an account."""

    exit_code = ExitCode.NOPERM


class ServerRefused(MailmirrorError):
    """The server answered NO/BAD to a command that the pass cannot go on without."""

    exit_code = ExitCode.UNAVAILABLE


class LockedError(MailmirrorError):
    """Another process is working on the same pair."""

    exit_code = ExitCode.TEMPFAIL


class Stopped(MailmirrorError):
    """A pass ended early because the daemon is stopping; its state is consistent."""

    exit_code = ExitCode.OK


class InternalError(MailmirrorError):
    exit_code = ExitCode.SOFTWARE
