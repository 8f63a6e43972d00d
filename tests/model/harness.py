"""Run the real engine (PairPass, a real StateStore on a temporary SQLite file) against the IMAP model."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import tempfile
import threading
import weakref
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import mailmirror.engine.pair_pass
from mailmirror.config.config_file import Config, load_config
from mailmirror.engine.outcome import DELETED_FOLDER_RULE, PairReport
from mailmirror.engine.pair_pass import PairPass
from mailmirror.state import locks
from mailmirror.state.store import StateStore
from tests.model.imap_model import Mailbox, ModelProcess, ProcessCrash, World

MessageKey = tuple[bytes, frozenset[str], tuple[datetime, timedelta | None]]


def model_message(n: int, *, message_id: bool = True, size: int = 0) -> bytes:
    """A message whose identity (Message-ID, or From/To/Subject/Date without one) is its own."""
    headers = [
        f"From: Sender {n} <s{n}@example.org>",
        "To: alice@example.org",
        f"Subject: model message {n}",
        f"Date: {format_date(n)}",
    ]
    if message_id:
        headers.insert(0, f"Message-ID: <{n}.model@example.org>")
    body = f"Message number {n}.\r\n" + "x" * size + "\r\n"
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def format_date(n: int) -> str:
    moment = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=n)
    return moment.strftime("%a, %d %b %Y %H:%M:%S +0000")


def internaldate(n: int, offset_hours: int = 0) -> datetime:
    """Second precision with a zone offset, as an INTERNALDATE is."""
    return datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=offset_hours))) + timedelta(seconds=3601 * n)


def key(raw: bytes, flags: frozenset[str], date: datetime) -> MessageKey:
    return raw, flags, (date, date.utcoffset())  # the offset too: INTERNALDATE kept byte for byte


def contents(box: Mailbox) -> Counter[MessageKey]:
    return Counter(key(m.raw, m.flags, m.internaldate) for m in box.messages.values())


class Harness:
    """A pair `test` from the model's source account to its destination account, a config file and a
    state database in a temporary directory; each pass as a new process would run it."""

    def __init__(self, world: World | None = None, *, pair_options: str = "") -> None:
        self.world = world or World()
        # on tmpfs when there is one: thousands of passes, each committing to SQLite (fsync) many times
        shm = Path("/dev/shm")
        self.directory = Path(tempfile.mkdtemp(prefix="mailmirror-model-", dir=shm if shm.is_dir() else None))
        # gone with the harness too (tests that never call cleanup() left thousands of them in /dev/shm)
        self._removal = weakref.finalize(self, shutil.rmtree, self.directory, ignore_errors=True)
        self.pair_options = pair_options
        self.config_path = self.directory / "mailmirror.yaml"
        self.write_config()

    def write_config(self, pair_options: str | None = None) -> None:
        if pair_options is not None:
            self.pair_options = pair_options
        text = (
            f"state: {{path: {self.directory / 'state.db'}}}\n"
            'metrics: {listen: "127.0.0.1:0"}\n'
            # the destination locks of this harness alone: the machine-wide default (/run/mailmirror) is shared
            # with every other test process, whose model passes lock the same model mailbox
            f"daemon: {{lock_dir: {self.directory / 'locks'}}}\n"
            "accounts:\n"
            "  src: {host: source.model.invalid, username: alice, password: {env: MAILMIRROR_MODEL_UNUSED}}\n"
            "  dst: {host: destination.model.invalid, username: backup, password: {env: MAILMIRROR_MODEL_UNUSED}}\n"
            "pairs:\n  test:\n    source: src\n    destination: dst\n"
            + "".join(f"    {line}\n" for line in self.pair_options.splitlines() if line.strip())
        )
        self.config_path.write_text(text, encoding="utf-8")

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    def run_pass(self, *, stop: threading.Event | None = None) -> PairReport:
        """One pass in a new process (a ProcessCrash escapes, as the process would be gone)."""
        self.assert_no_process_left()
        config = self.config
        store = StateStore(config.state.path)
        process = ModelProcess(self.world)
        store.db.conn = DyingConnection(store.db.conn, process)
        threads = set(threading.enumerate())
        try:
            with process_locks() as taken:
                try:  # the engine's clock (late-write windows) is the world's, moved on by window_passes()
                    return PairPass(
                        "test",
                        config.effective_pairs()["test"],
                        config,
                        store,
                        stop=stop,
                        connect=process.connect,
                        clock=self.world.now,
                    ).run()
                finally:
                    if process.crashed:  # what the kernel releases of a dead process: its descriptors, and so
                        for lock in taken:  # their flocks (the in-process lock is gone with the process)
                            lock.release()
        finally:
            store.close()  # a transaction still open is rolled back, as SQLite recovers it after a crash
            for thread in set(threading.enumerate()) - threads:
                thread.join(timeout=30)
                assert not thread.is_alive(), f"thread {thread.name} of a pass outlived it"

    def assert_no_process_left(self) -> None:
        """Before a pass (a new process): no lock of an earlier pass is still held, which would make this one
        wait for ever (passes of one process wait for each other's destination lock) or end LockedError."""
        for path, local in list(locks._in_process.items()):
            if Path(path).is_relative_to(self.directory):
                assert not local.locked(), f"an earlier pass still holds the in-process destination lock {path}"
        for path in self.directory.glob("**/*.lock"):
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AssertionError(f"an earlier pass still holds the lock file {path}") from None
            finally:
                os.close(fd)  # and with it the flock just taken

    def window_passes(self) -> None:
        """The late-write window (transfer.late_write_window) goes by: what the destination still held of a
        lost connection it has executed by then."""
        self.world.destination.execute_late()
        self.world.clock_offset += self.config.effective_pairs()["test"].transfer.late_write_window + timedelta(
            minutes=1
        )

    def crashing_pass(self) -> PairReport | None:
        """A pass that may crash: its report, or None when the process died."""
        try:
            return self.run_pass()
        except ProcessCrash:
            return None

    def lose_state(self) -> None:
        for path in self.directory.glob("state.db*"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def cleanup(self) -> None:
        self._removal()

    # -- reading the servers -------------------------------------------------------------------------

    @property
    def source(self) -> dict[str, Mailbox]:
        return self.world.source.accounts["alice"]

    @property
    def destination(self) -> dict[str, Mailbox]:
        return self.world.destination.accounts["backup"]

    def count(self, side: str, folder: str = "INBOX") -> int:
        folders = self.source if side == "source" else self.destination
        return len(folders[folder].messages) if folder in folders else 0


class DyingConnection:
    """The state database connection of a model process: once the process died (`ProcessCrash`), nothing of
    it reaches the file any more. The engine's finally and except blocks still run after a simulated crash;
    in a real one they do not, so their writes (and a COMMIT) are refused; a ROLLBACK is let through, it
    is what SQLite does to the dead process's open transaction anyway."""

    def __init__(self, connection: sqlite3.Connection, process: ModelProcess) -> None:
        self._connection = connection
        self._process = process

    def _alive(self, sql: str = "") -> None:
        if self._process.crashed and not sql.lstrip().upper().startswith("ROLLBACK"):
            raise ProcessCrash("the process is gone (state database)")

    def execute(self, sql: str, *parameters: Any) -> sqlite3.Cursor:
        self._alive(sql)
        return self._connection.execute(sql, *parameters)

    def executemany(self, sql: str, parameters: Any) -> sqlite3.Cursor:
        self._alive(sql)
        return self._connection.executemany(sql, parameters)

    def executescript(self, script: str) -> sqlite3.Cursor:
        self._alive()
        return self._connection.executescript(script)

    def commit(self) -> None:
        self._alive()
        self._connection.commit()

    def cursor(self) -> sqlite3.Cursor:
        self._alive()
        return self._connection.cursor()

    def __getattr__(self, name: str) -> Any:  # rollback, close, in_transaction, ...
        return getattr(self._connection, name)


@contextlib.contextmanager
def process_locks() -> Iterator[list[locks.DestinationLock | locks.PairLock]]:
    """The pair and destination locks a pass takes, for releasing them as the kernel would if it dies."""
    taken: list[locks.DestinationLock | locks.PairLock] = []

    class RecordedDestinationLock(locks.DestinationLock):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            taken.append(self)

    class RecordedPairLock(locks.PairLock):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            taken.append(self)

    with (
        mock.patch.object(mailmirror.engine.pair_pass, "DestinationLock", RecordedDestinationLock),
        mock.patch.object(mailmirror.engine.pair_pass, "PairLock", RecordedPairLock),
    ):
        yield taken


def folder_mapping(report: PairReport) -> dict[str, str]:
    return {f.source: f.destination for f in report.folders if f.rule != DELETED_FOLDER_RULE}
