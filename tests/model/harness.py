"""Run the real engine (PairPass, a real StateStore on a temporary SQLite file) against the IMAP model."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from unittest import mock

import mailmirror.engine.sync
from mailmirror.config.config_file import Config, load_config
from mailmirror.engine.sync import DELETED_FOLDER_RULE, PairPass, PairReport
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
        self.pair_options = pair_options
        self.config_path = self.directory / "mailmirror.yaml"
        self.write_config()

    def write_config(self, pair_options: str | None = None) -> None:
        if pair_options is not None:
            self.pair_options = pair_options
        text = (
            f"state: {{path: {self.directory / 'state.db'}}}\n"
            'metrics: {listen: "127.0.0.1:0"}\n'
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
        config = self.config
        store = StateStore(config.state.path)
        process = ModelProcess(self.world)
        world = self.world

        class ModelTime(datetime):  # the engine's clock (late-write windows), moved on by window_passes()
            @classmethod
            def now(cls, tz: tzinfo | None = None) -> ModelTime:
                return cls.fromtimestamp(world.now().timestamp(), tz)

        try:
            with mock.patch.object(mailmirror.engine.sync, "datetime", ModelTime):
                return PairPass(
                    "test", config.effective_pairs()["test"], config, store, stop=stop, connect=process.connect
                ).run()
        finally:
            store.close()

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
        shutil.rmtree(self.directory, ignore_errors=True)

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


def folder_mapping(report: PairReport) -> dict[str, str]:
    return {f.source: f.destination for f in report.folders if f.rule != DELETED_FOLDER_RULE}
