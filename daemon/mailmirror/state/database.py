"""The connection to the state database: SQLite in WAL mode through sqlite-utils, brought to the current
schema when opened, shared by the worker threads of a pass under one lock."""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import sqlite_utils

from mailmirror.state.schema import migrate
from mailmirror.state.storage_errors import state_error


class StateDatabase:
    """An open state database.

    Thread-safe: the worker threads of a pass share one connection, every query method (see `locked`) and
    every `transaction()` block, for its whole duration, holds the lock, so one thread's transaction never
    takes in another thread's writes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # No sqlite-utils plugins on our state DB: loading them scans every installed package's entry
            # points (~15 ms of each start) and none belongs on this connection.
            self.db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False), execute_plugins=False)
            self.db.enable_wal()
            # FULL: a journalled 'pending' row must be on disk before its APPEND is sent.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=10000")
            migrate(self.db.conn, path)
        except (sqlite3.Error, OSError) as error:
            raise state_error(path, error, "open") from None

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work (nested blocks join the outer one); the lock is held throughout."""
        with self.lock, self.db.atomic():
            yield


_Database = TypeVar("_Database", bound=StateDatabase)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def locked(
    method: Callable[Concatenate[_Database, _P], _R],
) -> Callable[Concatenate[_Database, _P], _R]:
    """Serialise a query method on the database's lock: the worker threads of a pass share one connection."""

    @functools.wraps(method)
    def wrapper(self: _Database, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


def now_text(moment: datetime | None = None) -> str:
    """The time now (or ``moment``) as the state database keeps it (UTC, ISO 8601, to the second)."""
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
