"""The state database's schema: forward migrations, one migrator at a time, a newer schema refused."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mailmirror.errors import ConfigError
from mailmirror.state.schema import MIGRATIONS, SCHEMA_VERSION
from mailmirror.state.store import StateStore


def versions(path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def columns(path: Path, table: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_a_version_1_database_is_brought_forward_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(
            f"CREATE TABLE schema_version (version INTEGER NOT NULL);\n{MIGRATIONS[1]}\n"
            "INSERT INTO schema_version VALUES (1);\n"
            "INSERT INTO folders VALUES ('p', 'INBOX', 'INBOX', 7, 9, 12, 11, NULL, '2024-01-01T00:00:00');"
        )
    StateStore(path).close()
    assert versions(path) == list(range(1, SCHEMA_VERSION + 1))
    assert "dst_uidnext" in columns(path, "folders")
    assert columns(path, "deferred") and columns(path, "backlog")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT src_uidvalidity, src_uidnext FROM folders").fetchall() == [(7, 12)]
    StateStore(path).close()  # opening again changes nothing
    assert versions(path) == list(range(1, SCHEMA_VERSION + 1))


def test_stores_opened_at_once_on_a_new_database_migrate_it_once(tmp_path: Path) -> None:
    """Passes of `sync` of several pairs each open the database: one migrates, the others wait for it."""
    path = tmp_path / "state.db"
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            StateStore(path).close()
        except BaseException as error:  # collected: the assertion below shows it
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert versions(path) == list(range(1, SCHEMA_VERSION + 1))


def test_a_database_from_a_newer_mailmirror_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigError, match=r"newer than this mailmirror.*Upgrade mailmirror"):
        StateStore(path)


def test_a_version_6_database_keeps_its_backlog_under_the_new_name(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version in range(1, 7):
            conn.executescript(MIGRATIONS[version])
            conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
        conn.execute("INSERT INTO pending VALUES ('p', 'INBOX', 4)")
        conn.commit()
    store = StateStore(path)
    try:
        assert store.backlog("p") == 4 and store.backlog_by_pair() == {"p": 4}
    finally:
        store.close()
    assert versions(path) == list(range(1, SCHEMA_VERSION + 1))
    assert not columns(path, "pending")


def test_the_records_the_planner_needs_load_without_sqlite() -> None:
    """engine/planner.py imports state/records.py: it must stay cheap (no SQLite, no sqlite-utils)."""
    code = "import sys, mailmirror.state.records; print(sorted(m for m in sys.modules if 'sqlite' in m))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
