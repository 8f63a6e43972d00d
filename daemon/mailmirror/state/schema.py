"""The state database's tables and their forward migrations (schema versions 1 to 7).

``MIGRATIONS[n]`` brings a database from version n-1 to n; `migrate` runs the missing ones, one migrator at
a time, and refuses a database of a newer mailmirror. What each table holds: state/store.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from mailmirror.errors import ConfigError

SCHEMA_VERSION = 7

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

# v7: the lag table of v4 is the backlog (one name per idea: "pending" is the journal status of a message).
_SCHEMA_V7 = """
ALTER TABLE pending RENAME TO backlog;
"""

#: Forward migrations: MIGRATIONS[n] brings a database from version n-1 to n.
MIGRATIONS: dict[int, str] = {
    1: _SCHEMA_V1,
    2: _SCHEMA_V2,
    3: _SCHEMA_V3,
    4: _SCHEMA_V4,
    5: _SCHEMA_V5,
    6: _SCHEMA_V6,
    7: _SCHEMA_V7,
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


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database at ``path`` (open on ``conn``) to SCHEMA_VERSION."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    if _schema_version(conn) == SCHEMA_VERSION:
        return
    conn.commit()
    # IMMEDIATE: one migrator at a time (passes of a `sync` of several pairs, the daemon and a manual
    # sync); the version is read again inside, so a migration never runs twice.
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _schema_version(conn)
        if current > SCHEMA_VERSION:
            raise ConfigError(
                f"state database {path} has schema version {current}, newer than this mailmirror "
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


def _schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)
