"""Failures of the state database in words: each cause (disk full, corrupt file, permissions, I/O error,
busy, a misplaced state.path) with its own fix."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from mailmirror.errors import ConfigError, MailmirrorError, StateStorageError


def state_error(path: Path, error: sqlite3.Error | OSError, doing: str) -> MailmirrorError:
    """The error, in words, for an operation on the state database that failed: each cause its own fix."""
    cause = _state_error_cause(error)
    if cause == "io" and _nearly_full(path):
        cause = "full"  # SQLite reports a full disk while it grows the WAL as a mere I/O error
    where = f"state database {path}"
    misplaced = _path_problem(path)
    if misplaced:
        return ConfigError(f"{where}: {misplaced}. Check state.path: it names the database file")
    if cause == "full":
        return StateStorageError(
            f"{where}: cannot {doing} it: the disk (or quota) is full. Free some space and run again: "
            "what was recorded before is intact, and no mail was lost (the next pass resolves the batch in flight)"
        )
    if cause == "corrupt":
        return StateStorageError(
            f"{where}: not a mailmirror state database, or corrupt ({error}). Check that state.path points at "
            "the right file; if the file is damaged, move it aside: the next pass starts a new one and "
            "recognises the messages already on the destination (no duplicates)"
        )
    if cause == "access":
        return ConfigError(
            f"{where}: cannot {doing} it ({error}): the user running mailmirror needs to read and write that "
            "file and its directory. Check state.path and its permissions"
        )
    if cause == "io":
        return StateStorageError(
            f"{where}: cannot {doing} it: the operating system reported an I/O error ({error}). Check the disk "
            "(dmesg, df); what was recorded before is intact"
        )
    if cause == "busy":
        return StateStorageError(f"{where}: locked by another process for too long ({error}); run again later")
    if isinstance(error, OSError):
        return ConfigError(f"{where}: cannot {doing} it ({error.strerror or error}). Check state.path")
    return StateStorageError(f"{where}: cannot {doing} it ({error})")


def _path_problem(path: Path) -> str | None:
    if path.is_dir():
        return "state.path is a directory, not a file (e.g. /var/lib/mailmirror/state.db)"
    if path.exists() and not path.is_file():
        return "state.path is not a regular file (a named pipe or a device?)"
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a directory"
    return None


def _state_error_cause(error: sqlite3.Error | OSError) -> str:
    if isinstance(error, OSError):
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return "full"
        return "access" if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "other"
    primary = (getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF
    causes = {
        sqlite3.SQLITE_FULL: "full",
        sqlite3.SQLITE_NOTADB: "corrupt",
        sqlite3.SQLITE_CORRUPT: "corrupt",
        sqlite3.SQLITE_CANTOPEN: "access",
        sqlite3.SQLITE_READONLY: "access",
        sqlite3.SQLITE_PERM: "access",
        sqlite3.SQLITE_AUTH: "access",
        sqlite3.SQLITE_BUSY: "busy",
        sqlite3.SQLITE_LOCKED: "busy",
    }
    if primary in causes:
        return causes[primary]
    if primary == sqlite3.SQLITE_IOERR:
        return "io"
    return "full" if "disk is full" in str(error) else "other"


def _nearly_full(path: Path) -> bool:
    existing = next((folder for folder in (path.parent, *path.parents) if folder.is_dir()), None)
    try:
        return existing is not None and shutil.disk_usage(existing).free < 1024 * 1024
    except OSError:
        return False
