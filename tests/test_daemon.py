"""`mailmirror run`, as a subprocess, against real Dovecot servers."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailmirror.lab.dovecot import SeedMessage, seed
from mailmirror.state.locks import PairLock
from mailmirror.state.store import StateStore
from tests.support import (
    Mirror,
    RunningDaemon,
    Setup,
    account_yaml,
    fresh_count,
    message_count,
    simple_message,
)

pytestmark = pytest.mark.dovecot


def test_new_mail_in_a_watched_folder_arrives_within_seconds(
    start_daemon: Callable[[Path], RunningDaemon], mirror: Mirror
) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(3)])
    setup = mirror.setup(pair_options="schedule: {idle: [INBOX], every: 1h}")
    daemon = start_daemon(setup.config_path)
    daemon.wait_for_log("watching INBOX with IDLE")
    daemon.wait_for(lambda: fresh_count(mirror.dest_server, mirror.dst_user) == 3, "the first pass")
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(100))])
    arrived = time.monotonic()
    daemon.wait_for(lambda: fresh_count(mirror.dest_server, mirror.dst_user) == 4, "the pushed message", timeout=5)
    print(f"push latency {time.monotonic() - arrived:.2f} s")
    assert daemon.stop() == 0


def test_an_every_pair_runs_on_schedule(start_daemon: Callable[[Path], RunningDaemon], mirror: Mirror) -> None:
    setup = mirror.setup(pair_options="schedule: {every: 1s}")
    daemon = start_daemon(setup.config_path)
    daemon.wait_for_log("test: pass ok")
    seed(mirror.src, "Later", [SeedMessage(simple_message(1))])
    daemon.wait_for(lambda: "Later" in {n for _f, _d, n in mirror.dst.list_folders()}, "the next scheduled pass")
    daemon.wait_for(lambda: message_count(mirror.dst, "Later") == 1, "the message")
    assert daemon.stop() == 0


def test_sigterm_during_a_large_copy_exits_0_and_the_next_pass_completes(
    start_daemon: Callable[[Path], RunningDaemon], mirror: Mirror
) -> None:
    messages = [SeedMessage(simple_message(i, size=60_000 if i % 10 == 0 else 2_000)) for i in range(600)]
    for start in range(0, len(messages), 100):
        seed(mirror.src, "Big", messages[start : start + 100])
    setup = mirror.setup()
    daemon = start_daemon(setup.config_path)
    daemon.wait_for(
        lambda: "Big" in {n for _f, _d, n in mirror.dst.list_folders()} and message_count(mirror.dst, "Big") > 0,
        "the copy to start",
    )
    assert daemon.stop() == 0
    assert "stopped" in daemon.text()
    assert message_count(mirror.dst, "Big") <= 600
    assert lag(setup) == 600 - done_rows(setup, "Big")  # the lag is right after a stopped pass too
    setup.sync()
    assert message_count(mirror.dst, "Big") == 600
    assert (lag(setup), done_rows(setup, "Big")) == (0, 600)
    assert setup.verify().clean


def lag(setup: Setup) -> int:
    """The pair's pending messages, from the state database (what mailmirror_pending_messages shows)."""
    store = StateStore(setup.directory / "state.db")
    try:
        return store.backlog("test")
    finally:
        store.close()


def done_rows(setup: Setup, folder: str) -> int:
    store = StateStore(setup.directory / "state.db")
    try:
        return sum(1 for message in store.messages("test", folder).values() if message.status == "done")
    finally:
        store.close()


def test_sighup_adds_and_removes_pairs_and_refuses_an_invalid_config(
    start_daemon: Callable[[Path], RunningDaemon], mirror: Mirror
) -> None:
    other_source = mirror.source_server.add_user()
    other_destination = mirror.dest_server.add_user()
    for server, user in ((mirror.source_server, other_source), (mirror.dest_server, other_destination)):
        with server.connect(user) as client:  # Dovecot creates a new user's INBOX on first use: do it now,
            message_count(client)  # not in a race with the daemon's first session (it drops one of them)
    setup = mirror.setup(pair_options="schedule: {every: 1s}")
    daemon = start_daemon(setup.config_path)
    daemon.wait_for_log("test: pass ok")

    text = setup.config_path.read_text(encoding="utf-8")
    accounts = account_yaml("src2", mirror.source_server, other_source, setup.directory) + account_yaml(
        "dst2", mirror.dest_server, other_destination, setup.directory
    )
    text = text.replace("pairs:\n", accounts + "pairs:\n")
    text = text.replace(
        "  test:\n    source: src\n    destination: dst\n", "  other:\n    source: src2\n    destination: dst2\n"
    )
    setup.config_path.write_text(text, encoding="utf-8")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_log("config reloaded: 1 pairs (1 added, 1 removed, 0 changed)")
    with mirror.source_server.connect(other_source) as client:
        seed(client, "INBOX", [SeedMessage(simple_message(7))])
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(8))])
    daemon.wait_for(lambda: fresh_count(mirror.dest_server, other_destination) == 1, "the added pair to sync")

    setup.config_path.write_text(text + "  broken: {source: nowhere, destination: dst2}\n", encoding="utf-8")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_log("config reload refused")
    assert "unknown account 'nowhere'" in daemon.text()
    with mirror.source_server.connect(other_source) as client:
        seed(client, "INBOX", [SeedMessage(simple_message(9))])
    daemon.wait_for(
        lambda: fresh_count(mirror.dest_server, other_destination) == 2, "syncing to go on with the old config"
    )
    assert message_count(mirror.dst) == 0  # the removed pair stopped
    assert daemon.stop() == 0


def test_a_pair_with_a_wrong_password_backs_off_while_another_keeps_syncing(
    start_daemon: Callable[[Path], RunningDaemon], mirror: Mirror
) -> None:
    setup = mirror.setup(pair_options="schedule: {every: 1s}")
    bad = account_yaml("bad", mirror.source_server, mirror.src_user, setup.directory)
    (setup.directory / "bad.password").write_text("Xyzzy-not-it-42\n", encoding="utf-8")
    text = setup.config_path.read_text(encoding="utf-8").replace("pairs:\n", bad + "pairs:\n")
    text += "  failing:\n    source: bad\n    destination: dst\n    schedule: {every: 1s}\n"
    setup.config_path.write_text(text, encoding="utf-8")
    daemon = start_daemon(setup.config_path)
    daemon.wait_for_log("failing: pass failed")
    for index in range(3):
        seed(mirror.src, "INBOX", [SeedMessage(simple_message(50 + index))])
        daemon.wait_for(lambda i=index: message_count(mirror.dst) == i + 1, "the healthy pair")
    log = daemon.text()
    assert log.count("failing: pass failed") == 1, "backs off: no retry within the first 30 s"
    assert "retrying in" in log and "Xyzzy-not-it-42" not in log
    assert daemon.stop() == 0


def test_a_manual_sync_of_a_pair_in_use_gives_up_with_a_clear_message(mirror: Mirror) -> None:
    setup: Setup = mirror.setup()
    with PairLock(setup.directory / "state.db", "test"):
        result = setup.run("sync")
    assert result.returncode == 75, result.stdout + result.stderr
    assert "is being synced by mailmirror pid" in result.stdout + result.stderr
    assert setup.run("sync").returncode == 0
