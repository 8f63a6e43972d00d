"""The state store: what each pair has synced, in SQLite (WAL) through sqlite-utils.

Tables (all keyed by pair and source folder name; no secrets anywhere):

- ``folders``: both UIDVALIDITYs, the source's UIDNEXT / MESSAGES / HIGHESTMODSEQ seen at the last pass.
- ``messages``: the UID map src_uid → dst_uid with fingerprint, size and the flags last synced. A row is
  written as ``pending`` *before* its APPEND is sent and becomes ``done`` only once the destination
  confirmed it: after a crash, pending rows are resolved against the destination before anything else
  (found by fingerprint → done; not found → dropped and copied again). That journal is what makes a
  copy exactly-once.
- ``failures``: messages the destination refused, with the server's reason (retried on every pass).
- ``runs``: one row per pass and pair, for ``mailmirror status``.
- ``folder_counts``: each mapped folder's messages on both sides at the pair's last full pass;
  ``verifies``: every `mailmirror verify` result (for ``mailmirror status`` and ``report``).
- ``late_writes``: appends of a lost connection that resolution did not find and copied again: the
  server may still execute the old APPEND late. Watched until their deadline (transfer.late_write_window)
  for a byte-identical copy of our own above the destination UIDNEXT of the resolution, which is removed.

The database is safe to inspect with the ``sqlite-utils`` CLI while the daemon runs.
"""

from __future__ import annotations

import errno
import functools
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import sqlite_utils

from mailmirror.errors import ConfigError, MailmirrorError, StateStorageError

SCHEMA_VERSION = 6

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS folders (
    pair TEXT NOT NULL,
    src_folder TEXT NOT NULL,
    dst_folder TEXT NOT NULL,
    src_uidvalidity INTEGER NOT NULL,
    dst_uidvalidity INTEGER NOT NULL,
    src_uidnext INTEGER,
    src_messages INTEGER,
    src_highestmodseq INTEGER,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (pair, src_folder)
);
CREATE TABLE IF NOT EXISTS messages (
    pair TEXT NOT NULL,
    src_folder TEXT NOT NULL,
    src_uid INTEGER NOT NULL,
    dst_uid INTEGER,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done')),
    fingerprint TEXT NOT NULL,
    size INTEGER NOT NULL,
    flags TEXT NOT NULL,
    dst_uid_floor INTEGER,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (pair, src_folder, src_uid)
);
CREATE INDEX IF NOT EXISTS messages_pending ON messages (pair, src_folder) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS failures (
    pair TEXT NOT NULL,
    src_folder TEXT NOT NULL,
    src_uid INTEGER NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    PRIMARY KEY (pair, src_folder, src_uid)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT,
    copied INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_pair ON runs (pair, id);
"""

# v2: the destination's UIDNEXT when the folder was last opened: messages another tool appends later
# have UIDs from there on, and are the only ones an incremental pass must consider adopting.
_SCHEMA_V2 = """
ALTER TABLE folders ADD COLUMN dst_uidnext INTEGER;
"""

# v3: messages skipped by a rule whose verdict can change (min_age: time passes; search: flags change).
_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS deferred (
    pair TEXT NOT NULL,
    src_folder TEXT NOT NULL,
    src_uid INTEGER NOT NULL,
    reason TEXT NOT NULL,
    eligible_at TEXT,
    PRIMARY KEY (pair, src_folder, src_uid)
);
"""

# v4: per folder, the messages its last pass wanted on the destination and did not get there (the lag
# reported as mailmirror_pending_messages): read after each pass, never by scanning the mailboxes.
_SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS pending (
    pair TEXT NOT NULL,
    src_folder TEXT NOT NULL,
    messages INTEGER NOT NULL,
    PRIMARY KEY (pair, src_folder)
);
"""

# v5: late-write watches (docs/architecture.md, "Why exactly once"): one row per append that a lost
# connection may still execute late, with the destination UIDNEXT above which its copy would land.
_SCHEMA_V5 = """
CREATE TABLE IF NOT EXISTS late_writes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair TEXT NOT NULL,
    src_folder TEXT NOT NULL,
    src_uid INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    dst_uid_floor INTEGER NOT NULL,
    deadline TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS late_writes_folder ON late_writes (pair, src_folder);
"""

# v6: what `mailmirror status` and `report` show over a fleet without reading the mailboxes: each run's
# adoptions (messages already on the destination) and rule skips; each mapped folder's message counts on both
# sides at the last full pass; and every `mailmirror verify` result.
_SCHEMA_V6 = """
ALTER TABLE runs ADD COLUMN adopted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS folder_counts (
    pair TEXT NOT NULL,
    src_folder TEXT NOT NULL,
    dst_folder TEXT NOT NULL,
    src_messages INTEGER NOT NULL,
    dst_messages INTEGER,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (pair, src_folder)
);
CREATE TABLE IF NOT EXISTS verifies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair TEXT NOT NULL,
    verified_at TEXT NOT NULL,
    clean INTEGER NOT NULL,
    folders INTEGER NOT NULL,
    src_messages INTEGER NOT NULL,
    dst_messages INTEGER NOT NULL,
    differences INTEGER NOT NULL,
    extra INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    summary TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS verifies_pair ON verifies (pair, id);
"""

#: Forward migrations: MIGRATIONS[n] brings a database from version n-1 to n.
MIGRATIONS: dict[int, str] = {
    1: _SCHEMA_V1,
    2: _SCHEMA_V2,
    3: _SCHEMA_V3,
    4: _SCHEMA_V4,
    5: _SCHEMA_V5,
    6: _SCHEMA_V6,
}


def _statements(script: str) -> Iterator[str]:
    """A migration script, statement by statement (executescript would commit the open transaction)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    if statement.strip():
        yield statement


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[Concatenate[StateStore, _P], _R]) -> Callable[Concatenate[StateStore, _P], _R]:
    """Serialise a method on the store's lock: the worker threads of a pass share one connection."""

    @functools.wraps(method)
    def wrapper(self: StateStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def flags_to_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(flags))


def flags_from_text(text: str) -> frozenset[str]:
    return frozenset(text.split())


@dataclass(frozen=True)
class FolderState:
    pair: str
    src_folder: str
    dst_folder: str
    src_uidvalidity: int
    dst_uidvalidity: int
    src_uidnext: int | None = None
    src_messages: int | None = None
    src_highestmodseq: int | None = None
    dst_uidnext: int | None = None


@dataclass(frozen=True)
class SyncedMessage:
    src_uid: int
    dst_uid: int | None
    status: str  # 'pending' | 'done'
    fingerprint: str
    size: int
    flags: frozenset[str]
    dst_uid_floor: int | None = None


@dataclass(frozen=True)
class LateWriteWatch:
    id: int
    src_uid: int
    fingerprint: str
    dst_uid_floor: int
    deadline: datetime


@dataclass(frozen=True)
class Failure:
    src_folder: str
    src_uid: int
    reason: str
    attempts: int


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


class StateStore:
    """All reads and writes of the state database.

    Thread-safe: the worker threads of a pass share one connection, every method (and every
    `transaction()` block, for its whole duration) holds the store's lock, so one thread's transaction
    never takes in another thread's writes.
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
            self._migrate()
        except (sqlite3.Error, OSError) as error:
            raise state_error(path, error, "open") from None

    @_locked
    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        if self._schema_version() == SCHEMA_VERSION:
            return
        conn = self.db.conn
        conn.commit()
        # IMMEDIATE: one migrator at a time (passes of a `sync` of several pairs, the daemon and a manual
        # sync); the version is read again inside, so a migration never runs twice.
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = self._schema_version()
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"state database {self.path} has schema version {current}, newer than this mailmirror "
                    f"({SCHEMA_VERSION}). Upgrade mailmirror or point state.path elsewhere."
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _statements(MIGRATIONS[version]):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise

    def _schema_version(self) -> int:
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work (nested blocks join the outer one); the lock is held throughout."""
        with self.lock, self.db.atomic():
            yield

    # -- folders -----------------------------------------------------------------------------------------

    @_locked
    def folder(self, pair: str, src_folder: str) -> FolderState | None:
        row = self.db.execute(
            "SELECT pair, src_folder, dst_folder, src_uidvalidity, dst_uidvalidity, src_uidnext, "
            "src_messages, src_highestmodseq, dst_uidnext FROM folders WHERE pair = ? AND src_folder = ?",
            [pair, src_folder],
        ).fetchone()
        return FolderState(*row) if row else None

    @_locked
    def save_folder(self, state: FolderState) -> None:
        self.db.execute(
            "INSERT INTO folders (pair, src_folder, dst_folder, src_uidvalidity, dst_uidvalidity, "
            "src_uidnext, src_messages, src_highestmodseq, dst_uidnext, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (pair, src_folder) DO UPDATE SET dst_folder = excluded.dst_folder, "
            "src_uidvalidity = excluded.src_uidvalidity, dst_uidvalidity = excluded.dst_uidvalidity, "
            "src_uidnext = excluded.src_uidnext, src_messages = excluded.src_messages, "
            "src_highestmodseq = excluded.src_highestmodseq, dst_uidnext = excluded.dst_uidnext, "
            "updated_at = excluded.updated_at",
            [
                state.pair,
                state.src_folder,
                state.dst_folder,
                state.src_uidvalidity,
                state.dst_uidvalidity,
                state.src_uidnext or None,  # a UIDNEXT of 0 is "unknown", never a marker to search from
                state.src_messages,
                state.src_highestmodseq,
                state.dst_uidnext or None,
                _now(),
            ],
        )

    @_locked
    def folders(self, pair: str) -> list[FolderState]:
        rows = self.db.execute(
            "SELECT pair, src_folder, dst_folder, src_uidvalidity, dst_uidvalidity, src_uidnext, "
            "src_messages, src_highestmodseq, dst_uidnext FROM folders WHERE pair = ? ORDER BY src_folder",
            [pair],
        )
        return [FolderState(*row) for row in rows]

    @_locked
    def rename_folder(self, pair: str, old: FolderState, new_src_folder: str, new_dst_folder: str) -> None:
        """A folder renamed on the source (and by us on the destination): its state follows it."""
        with self.transaction():
            for table in ("messages", "failures", "deferred", "pending", "late_writes"):
                self.db.execute(
                    f"UPDATE {table} SET src_folder = ? WHERE pair = ? AND src_folder = ?",
                    [new_src_folder, pair, old.src_folder],
                )
            self.db.execute(
                "UPDATE folders SET src_folder = ?, dst_folder = ?, updated_at = ? WHERE pair = ? AND src_folder = ?",
                [new_src_folder, new_dst_folder, _now(), pair, old.src_folder],
            )

    @_locked
    def forget_folder(
        self, pair: str, src_folder: str, *, keep_late_writes: bool = False, new_uids: bool = False
    ) -> None:
        """Drop the UID map of a folder (after a UIDVALIDITY change: it is rebuilt by fingerprint).

        ``keep_late_writes``: its open late-write watches stay (a late write can still land in the same
        destination folder); with ``new_uids`` (the destination's UIDVALIDITY changed) their UID floor
        means nothing any more and becomes 1: the whole new folder is looked at."""
        tables = ["messages", "failures", "deferred", "pending", "folders"]
        if not keep_late_writes:
            tables.append("late_writes")
        with self.transaction():
            for table in tables:
                self.db.execute(f"DELETE FROM {table} WHERE pair = ? AND src_folder = ?", [pair, src_folder])
            if keep_late_writes and new_uids:
                self.db.execute(
                    "UPDATE late_writes SET dst_uid_floor = 1 WHERE pair = ? AND src_folder = ?", [pair, src_folder]
                )

    # -- messages ----------------------------------------------------------------------------------------

    @_locked
    def messages(self, pair: str, src_folder: str) -> dict[int, SyncedMessage]:
        rows = self.db.execute(
            "SELECT src_uid, dst_uid, status, fingerprint, size, flags, dst_uid_floor FROM messages "
            "WHERE pair = ? AND src_folder = ?",
            [pair, src_folder],
        )
        return {
            row[0]: SyncedMessage(row[0], row[1], row[2], row[3], row[4], flags_from_text(row[5]), row[6])
            for row in rows
        }

    @_locked
    def journal_pending(self, pair: str, src_folder: str, entries: Iterable[SyncedMessage]) -> None:
        """Record appends about to be sent (status pending), in one durable transaction."""
        now = _now()
        with self.transaction():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO messages (pair, src_folder, src_uid, dst_uid, status, fingerprint, "
                "size, flags, dst_uid_floor, updated_at) VALUES (?, ?, ?, NULL, 'pending', ?, ?, ?, ?, ?)",
                [
                    (
                        pair,
                        src_folder,
                        e.src_uid,
                        e.fingerprint,
                        e.size,
                        flags_to_text(e.flags),
                        e.dst_uid_floor,
                        now,
                    )
                    for e in entries
                ],
            )

    @_locked
    def mark_done(self, pair: str, src_folder: str, entries: Iterable[SyncedMessage]) -> None:
        """Record messages known to be on the destination (appended and confirmed, or found there)."""
        now = _now()
        with self.transaction():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO messages (pair, src_folder, src_uid, dst_uid, status, fingerprint, "
                "size, flags, dst_uid_floor, updated_at) VALUES (?, ?, ?, ?, 'done', ?, ?, ?, NULL, ?)",
                [
                    (
                        pair,
                        src_folder,
                        e.src_uid,
                        e.dst_uid,
                        e.fingerprint,
                        e.size,
                        flags_to_text(e.flags),
                        now,
                    )
                    for e in entries
                ],
            )
            keys = [(pair, src_folder, e.src_uid) for e in entries]
            self.db.conn.executemany("DELETE FROM failures WHERE pair = ? AND src_folder = ? AND src_uid = ?", keys)
            self.db.conn.executemany("DELETE FROM deferred WHERE pair = ? AND src_folder = ? AND src_uid = ?", keys)

    @_locked
    def drop_pending(self, pair: str, src_folder: str, src_uids: Iterable[int]) -> None:
        """Pending appends that never reached the destination: forget them so they are copied again."""
        with self.transaction():
            self.db.conn.executemany(
                "DELETE FROM messages WHERE pair = ? AND src_folder = ? AND src_uid = ? AND status = 'pending'",
                [(pair, src_folder, uid) for uid in src_uids],
            )

    @_locked
    def update_flags(self, pair: str, src_folder: str, flags_by_src_uid: dict[int, frozenset[str]]) -> None:
        with self.transaction():
            self.db.conn.executemany(
                "UPDATE messages SET flags = ?, updated_at = ? WHERE pair = ? AND src_folder = ? AND src_uid = ?",
                [(flags_to_text(f), _now(), pair, src_folder, uid) for uid, f in flags_by_src_uid.items()],
            )

    @_locked
    def forget_messages(self, pair: str, src_folder: str, src_uids: Iterable[int]) -> None:
        """Rows of messages gone from the source (expunged, or moved away by mailmirror itself)."""
        keys = [(pair, src_folder, uid) for uid in src_uids]
        with self.transaction():
            for table in ("messages", "failures", "deferred"):
                self.db.conn.executemany(f"DELETE FROM {table} WHERE pair = ? AND src_folder = ? AND src_uid = ?", keys)

    @_locked
    def clear_failures(self, pair: str, src_folder: str, src_uids: Iterable[int]) -> None:
        self.db.conn.executemany(
            "DELETE FROM failures WHERE pair = ? AND src_folder = ? AND src_uid = ?",
            [(pair, src_folder, uid) for uid in src_uids],
        )
        self.db.conn.commit()

    @_locked
    def folders_needing_attention(self, pair: str) -> set[str]:
        """Source folders with unconfirmed appends or failed messages: never skipped by the fast path."""
        rows = self.db.execute(
            "SELECT src_folder FROM messages WHERE pair = ? AND status = 'pending' "
            "UNION SELECT src_folder FROM failures WHERE pair = ? "
            "UNION SELECT src_folder FROM deferred WHERE pair = ? AND eligible_at <= ? "
            "UNION SELECT src_folder FROM late_writes WHERE pair = ?",
            [pair, pair, pair, _now(), pair],
        )
        return {row[0] for row in rows}

    @_locked
    def fingerprints(self, pair: str, src_folders: Iterable[str]) -> frozenset[str]:
        folders = list(src_folders)
        if not folders:
            return frozenset()
        marks = ", ".join("?" for _ in folders)
        rows = self.db.execute(
            f"SELECT fingerprint FROM messages WHERE pair = ? AND status = 'done' AND src_folder IN ({marks})",
            [pair, *folders],
        )
        return frozenset(row[0] for row in rows)

    @_locked
    def failed_uids(self, pair: str, src_folder: str) -> list[int]:
        rows = self.db.execute(
            "SELECT src_uid FROM failures WHERE pair = ? AND src_folder = ? ORDER BY src_uid", [pair, src_folder]
        )
        return [row[0] for row in rows]

    @_locked
    def record_deferred(self, pair: str, src_folder: str, entries: Iterable[tuple[int, str, datetime | None]]) -> None:
        """Skipped messages to look at again: (src_uid, reason, eligible_at or None)."""
        with self.transaction():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO deferred (pair, src_folder, src_uid, reason, eligible_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        pair,
                        src_folder,
                        uid,
                        reason,
                        when.astimezone(UTC).isoformat(timespec="seconds") if when else None,
                    )
                    for uid, reason, when in entries
                ],
            )

    @_locked
    def deferred_uids(self, pair: str, src_folder: str) -> tuple[list[int], list[int]]:
        """(UIDs waiting for messages.search to match, UIDs old enough for min_age by now)."""
        rows = self.db.execute(
            "SELECT src_uid, eligible_at FROM deferred WHERE pair = ? AND src_folder = ? ORDER BY src_uid",
            [pair, src_folder],
        ).fetchall()
        now = _now()
        return [uid for uid, at in rows if at is None], [uid for uid, at in rows if at is not None and at <= now]

    # -- late writes -------------------------------------------------------------------------------------

    @_locked
    def watch_late_writes(
        self, pair: str, src_folder: str, entries: Iterable[SyncedMessage], dst_uid_floor: int, deadline: datetime
    ) -> None:
        """Appends of a lost connection that were not found and are copied again: watch for their late copy."""
        when = deadline.astimezone(UTC).isoformat(timespec="seconds")
        with self.transaction():
            self.db.conn.executemany(
                "INSERT INTO late_writes (pair, src_folder, src_uid, fingerprint, dst_uid_floor, deadline) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(pair, src_folder, e.src_uid, e.fingerprint, dst_uid_floor, when) for e in entries],
            )

    @_locked
    def late_write_watches(self, pair: str, src_folder: str) -> list[LateWriteWatch]:
        rows = self.db.execute(
            "SELECT id, src_uid, fingerprint, dst_uid_floor, deadline FROM late_writes "
            "WHERE pair = ? AND src_folder = ? ORDER BY id",
            [pair, src_folder],
        )
        return [LateWriteWatch(i, uid, fp, floor, datetime.fromisoformat(at)) for i, uid, fp, floor, at in rows]

    @_locked
    def close_late_write_watches(self, ids: Iterable[int]) -> None:
        with self.transaction():
            self.db.conn.executemany("DELETE FROM late_writes WHERE id = ?", [(i,) for i in ids])

    @_locked
    def claimed_dst_uids(self, dst_folder: str) -> set[int]:
        """Destination UIDs of this folder that any pair's state claims (copied or adopted): never removed
        as a late write. Cautious: pairs into another account's folder of the same name count too, and so do
        folders not saved yet (a first pass that did not finish)."""
        rows = self.db.execute(
            "SELECT m.dst_uid FROM messages m LEFT JOIN folders f ON f.pair = m.pair AND f.src_folder = m.src_folder "
            "WHERE (f.dst_folder = ? OR f.dst_folder IS NULL) AND m.dst_uid IS NOT NULL",
            [dst_folder],
        )
        return {row[0] for row in rows}

    @_locked
    def pending_fingerprints(self, dst_folder: str, pair: str, src_folder: str) -> set[str]:
        """Fingerprints of unconfirmed appends (no destination UID yet) of every other source folder into
        ``dst_folder`` (any pair; folders not saved yet count too): their copy may be on the destination
        already, unclaimed only until its folder marks it done. Never taken for a late write of ours."""
        rows = self.db.execute(
            "SELECT m.fingerprint FROM messages m "
            "LEFT JOIN folders f ON f.pair = m.pair AND f.src_folder = m.src_folder "
            "WHERE (f.dst_folder = ? OR f.dst_folder IS NULL) AND m.dst_uid IS NULL "
            "AND NOT (m.pair = ? AND m.src_folder = ?)",
            [dst_folder, pair, src_folder],
        )
        return {row[0] for row in rows}

    # -- failures ----------------------------------------------------------------------------------------

    @_locked
    def record_failure(self, pair: str, src_folder: str, src_uid: int, reason: str) -> None:
        now = _now()
        self.db.execute(
            "INSERT INTO failures (pair, src_folder, src_uid, reason, attempts, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT (pair, src_folder, src_uid) DO UPDATE SET "
            "reason = excluded.reason, attempts = attempts + 1, last_seen = excluded.last_seen",
            [pair, src_folder, src_uid, reason, now, now],
        )

    @_locked
    def failures(self, pair: str) -> list[Failure]:
        rows = self.db.execute(
            "SELECT src_folder, src_uid, reason, attempts FROM failures WHERE pair = ? ORDER BY src_folder, src_uid",
            [pair],
        )
        return [Failure(*row) for row in rows]

    # -- lag -------------------------------------------------------------------------------------------

    @_locked
    def set_pending(self, pair: str, src_folder: str, messages: int) -> None:
        self.db.execute(
            "INSERT INTO pending (pair, src_folder, messages) VALUES (?, ?, ?) "
            "ON CONFLICT (pair, src_folder) DO UPDATE SET messages = excluded.messages",
            [pair, src_folder, max(0, messages)],
        )

    @_locked
    def reduce_pending(self, pair: str, src_folder: str, copied: int) -> None:
        self.db.execute(
            "UPDATE pending SET messages = MAX(0, messages - ?) WHERE pair = ? AND src_folder = ?",
            [copied, pair, src_folder],
        )

    @_locked
    def pending(self, pair: str) -> int:
        """Messages the pair's last passes wanted on the destination and did not get there."""
        row = self.db.execute("SELECT SUM(messages) FROM pending WHERE pair = ?", [pair]).fetchone()
        return int(row[0] or 0)

    @_locked
    def pending_by_pair(self) -> dict[str, int]:
        return {
            pair: int(total) for pair, total in self.db.execute("SELECT pair, SUM(messages) FROM pending GROUP BY pair")
        }

    @_locked
    def prune_pending(self, pair: str, mapped_src_folders: Iterable[str]) -> None:
        """Forget the lag of folders the pair no longer syncs (excluded, or gone from the source)."""
        keep = sorted(set(mapped_src_folders))
        marks = ", ".join("?" for _ in keep)
        self.db.execute(f"DELETE FROM pending WHERE pair = ? AND src_folder NOT IN ({marks})", [pair, *keep])

    # -- runs --------------------------------------------------------------------------------------------

    @_locked
    def start_run(self, pair: str) -> int:
        cursor = self.db.execute("INSERT INTO runs (pair, started_at) VALUES (?, ?)", [pair, _now()])
        return int(cursor.lastrowid or 0)

    def finish_run(
        self,
        run_id: int,
        *,
        outcome: str,
        copied: int,
        failed: int,
        bytes_copied: int,
        error: str | None,
        adopted: int = 0,
        skipped: int = 0,
    ) -> None:
        self.db.execute(
            "UPDATE runs SET finished_at = ?, outcome = ?, copied = ?, failed = ?, bytes = ?, error = ?, "
            "adopted = ?, skipped = ? WHERE id = ?",
            [_now(), outcome, copied, failed, bytes_copied, error, adopted, skipped, run_id],
        )

    @_locked
    def last_successes(self) -> dict[str, float]:
        """Pair -> when its last successful pass (every folder synced, or some messages failed) ended."""
        rows = self.db.execute(
            "SELECT pair, MAX(finished_at) FROM runs WHERE outcome IN ('ok', 'partial') GROUP BY pair"
        )
        return {pair: datetime.fromisoformat(finished).timestamp() for pair, finished in rows if finished}

    @_locked
    def last_runs(self) -> list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT pair, started_at, finished_at, outcome, copied, failed, bytes, error FROM runs "
            "WHERE id IN (SELECT MAX(id) FROM runs GROUP BY pair) ORDER BY pair"
        )
        names = ["pair", "started_at", "finished_at", "outcome", "copied", "failed", "bytes", "error"]
        return [dict(zip(names, row, strict=True)) for row in rows]

    # -- fleet status and report ---------------------------------------------------------------------

    @_locked
    def record_folder_counts(self, pair: str, counts: Iterable[tuple[str, str, int, int | None]]) -> None:
        """After a full pass: (source folder, destination folder, source messages, destination messages or
        None) of every mapped folder; folders no longer mapped are forgotten."""
        rows = [(pair, src, dst, src_messages, dst_messages, _now()) for src, dst, src_messages, dst_messages in counts]
        with self.transaction():
            self.db.execute("DELETE FROM folder_counts WHERE pair = ?", [pair])
            self.db.conn.executemany(
                "INSERT INTO folder_counts (pair, src_folder, dst_folder, src_messages, dst_messages, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    @_locked
    def record_verify(self, pair: str, verdict: VerifyRecord) -> None:
        self.db.execute(
            "INSERT INTO verifies (pair, verified_at, clean, folders, src_messages, dst_messages, differences, "
            "extra, skipped, summary, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                pair,
                _now(),
                int(verdict.clean),
                verdict.folders,
                verdict.src_messages,
                verdict.dst_messages,
                verdict.differences,
                verdict.extra,
                verdict.skipped,
                verdict.summary,
                verdict.error,
            ],
        )
        self.db.conn.commit()

    @_locked
    def fleet_rows(self) -> dict[str, dict[str, object]]:
        """Per pair, everything `status` and `report` show, in a few grouped queries (no per-pair round trips)."""
        result: dict[str, dict[str, object]] = {}

        def row(pair: str) -> dict[str, object]:
            return result.setdefault(pair, {})

        for run in self.last_runs():
            row(str(run["pair"])).update({f"last_{key}": value for key, value in run.items() if key != "pair"})
        for pair, finished in self.db.execute(
            "SELECT pair, MAX(finished_at) FROM runs WHERE outcome IN ('ok', 'partial') GROUP BY pair"
        ):
            row(pair)["last_success"] = finished
        for pair, copied, adopted, runs in self.db.execute(
            "SELECT pair, SUM(copied), SUM(adopted), COUNT(*) FROM runs GROUP BY pair"
        ):
            row(pair).update({"copied": int(copied or 0), "adopted": int(adopted or 0), "passes": int(runs)})
        for pair, folders, src, dst, unknown in self.db.execute(
            "SELECT pair, COUNT(*), SUM(src_messages), SUM(dst_messages), SUM(dst_messages IS NULL) "
            "FROM folder_counts GROUP BY pair"
        ):
            row(pair).update(
                {
                    "folders": int(folders),
                    "src_messages": int(src or 0),
                    "dst_messages": None if unknown else int(dst or 0),
                }
            )
        for pair, done in self.db.execute("SELECT pair, COUNT(*) FROM messages WHERE status = 'done' GROUP BY pair"):
            row(pair)["synced"] = int(done)
        for pair, pending in self.pending_by_pair().items():
            row(pair)["pending"] = pending
        for pair, failed in self.db.execute("SELECT pair, COUNT(*) FROM failures GROUP BY pair"):
            row(pair)["refused"] = int(failed)
        for verify in self.db.execute(
            "SELECT pair, verified_at, clean, folders, src_messages, dst_messages, differences, extra, skipped, "
            "summary, error FROM verifies WHERE id IN (SELECT MAX(id) FROM verifies GROUP BY pair)"
        ):
            names = (
                "at",
                "clean",
                "folders",
                "src_messages",
                "dst_messages",
                "differences",
                "extra",
                "skipped",
                "summary",
                "error",
            )
            row(verify[0])["verify"] = dict(zip(names, verify[1:], strict=True))
        return result

    @_locked
    def refusal_reasons(self) -> dict[str, list[tuple[str, int]]]:
        """Per pair: (reason, messages) of the messages the destination refused, most frequent first."""
        reasons: dict[str, list[tuple[str, int]]] = {}
        for pair, reason, count in self.db.execute(
            "SELECT pair, reason, COUNT(*) AS n FROM failures GROUP BY pair, reason ORDER BY pair, n DESC, reason"
        ):
            reasons.setdefault(pair, []).append((reason, int(count)))
        return reasons

    @_locked
    def folder_count_rows(self, pair: str) -> list[tuple[str, str, int, int | None]]:
        rows = self.db.execute(
            "SELECT src_folder, dst_folder, src_messages, dst_messages FROM folder_counts WHERE pair = ? "
            "ORDER BY src_folder",
            [pair],
        )
        return [(src, dst, int(s), None if d is None else int(d)) for src, dst, s, d in rows]


@dataclass(frozen=True)
class VerifyRecord:
    """A `mailmirror verify` result as the state keeps it (counts and one line; never message contents)."""

    clean: bool
    folders: int
    src_messages: int
    dst_messages: int
    differences: int
    extra: int
    skipped: int
    summary: str
    error: str | None
