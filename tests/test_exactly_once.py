"""Exactly once where the journal alone did not suffice (issue 13, "What was seen" 1-4), against Dovecot:

1. a stalled destination executes a lost connection's APPENDs *after* the resumed pass copied them
   again (the fault proxy holds the bytes past the account's timeout, then delivers them): the pass
   that cannot prove exactly once exits 75; the next one removes the late copies of our own;
2. one pair under two state databases (two configs) at once: one writer per destination mailbox;
3. two pairs of one config into one destination account, in parallel: serialised, each adopts the
   other's copies;
4. one mailbox under two account names: a pair into itself is refused (exit 78), aliases warned about.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailmirror.config.config_file import load_config
from mailmirror.config.mailboxes import mailbox_identity
from mailmirror.lab.dovecot import DovecotServer, LabUser, SeedMessage, seed
from mailmirror.state.locks import DestinationLock
from mailmirror.state.records import SyncedMessage
from mailmirror.state.store import StateStore
from tests.conftest import MakeMirror
from tests.proxy import Fault, FaultProxy
from tests.support import ROOT, Mirror, Setup, account_yaml, message_count, simple_message

TEMPFAIL = 75


def _proxied_account(name: str, proxy: FaultProxy, user: LabUser, directory: Path, timeout: str) -> str:
    secret = directory / f"{name}.password"
    secret.write_text(user.password + "\n", encoding="utf-8")
    return (
        f"  {name}:\n    host: {proxy.host}\n    port: {proxy.port}\n    tls: none\n"
        f"    username: {user.username}\n    password: {{file: {secret}}}\n    timeout: {timeout}\n"
    )


def _write(directory: Path, text: str, name: str = "mailmirror.yaml") -> Setup:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return Setup(directory, path)


def _count(mirror: Mirror, folder: str = "INBOX") -> int:
    """Messages in a folder of the mirror's destination account, on a new connection."""
    client = mirror.dest_server.connect(mirror.dst_user)
    try:
        return message_count(client, folder)
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def destination_proxy(dest_server: DovecotServer) -> Iterator[FaultProxy]:
    with FaultProxy(dest_server.host, dest_server.port) as proxy:
        yield proxy


# ------------------------------------------------------------------------- 1. stalls and late writes


def _stall_setup(tmp_path: Path, mirror: Mirror, proxy: FaultProxy, window: str) -> Setup:
    """The mirror's pair, the destination through the proxy, with a short timeout so that a held APPEND is
    given up soon."""
    directory = tmp_path / "pair"
    directory.mkdir()
    return _write(
        directory,
        f"state: {{path: {directory / 'state.db'}}}\n"
        f"daemon: {{lock_dir: {directory / 'locks'}}}\n"
        "accounts:\n"
        + account_yaml("src", mirror.source_server, mirror.src_user, directory)
        + _proxied_account("dst", proxy, mirror.dst_user, directory, "2s")
        + "pairs:\n  test:\n    source: src\n    destination: dst\n"
        f"    transfer: {{retries: 2, backoff: 1s, workers: 1, late_write_window: {window}}}\n",
    )


def _stall_then_resume(setup: Setup, proxy: FaultProxy) -> subprocess.CompletedProcess[str]:
    """A pass whose first APPEND is held by the "server" until after the client gave up and resumed."""
    proxy.inject(Fault("up", pattern=b" APPEND ", action="hold", once=True))
    result = setup.run("sync")
    assert proxy.triggered == 1, "the APPEND was never held: the test did not test what it says"
    return result


def test_stalled_destination_executing_appends_late_ends_exactly_once(
    tmp_path: Path, mirror: Mirror, destination_proxy: FaultProxy
) -> None:
    total = 12
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i, size=2000)) for i in range(total)])
    setup = _stall_setup(tmp_path, mirror, destination_proxy, "1h")

    first = _stall_then_resume(setup, destination_proxy)
    output = first.stdout + first.stderr
    assert first.returncode == TEMPFAIL, output  # copied everything, but cannot prove exactly once yet
    assert "late_write_window" in output and "INBOX" in output, output
    assert "Traceback" not in output, output
    assert _count(mirror) == total

    assert destination_proxy.release_held() > 0  # the stalled server wakes up and runs the old APPEND
    _wait_for(lambda: _count(mirror) == 2 * total, "the late APPEND to be executed")

    second = setup.run("sync")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"Removed {total} late duplicates of our own" in second.stdout, second.stdout
    assert _count(mirror) == total
    verify = setup.run("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    third = setup.run("sync")  # the watches are closed: nothing left to prove
    assert third.returncode == 0 and "late duplicates" not in third.stdout, third.stdout + third.stderr


def test_late_appends_landing_during_the_resumed_pass_are_removed_by_it(
    tmp_path: Path, mirror: Mirror, destination_proxy: FaultProxy
) -> None:
    """The issue's timing: the server runs the old APPEND after the resumed pass found nothing and before
    it copies again. The same pass finds its own late copies at the end, removes them, and can prove it."""
    total = 8
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i, size=1800)) for i in range(total)])
    setup = _stall_setup(tmp_path, mirror, destination_proxy, "1h")
    destination_proxy.release_held_before(b" APPEND ")

    result = _stall_then_resume(setup, destination_proxy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Removed {total} late duplicates of our own" in result.stdout, result.stdout
    assert _count(mirror) == total
    verify = setup.run("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_without_a_late_write_window_the_late_appends_stay_duplicates(
    tmp_path: Path, mirror: Mirror, destination_proxy: FaultProxy
) -> None:
    """The issue's path 1 as it was (late_write_window: 0s turns the watch off): exit 0, then duplicates."""
    total = 6
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i, size=1500)) for i in range(total)])
    setup = _stall_setup(tmp_path, mirror, destination_proxy, "0s")

    first = _stall_then_resume(setup, destination_proxy)
    assert first.returncode == 0, first.stdout + first.stderr
    destination_proxy.release_held()
    _wait_for(lambda: _count(mirror) == 2 * total, "the late APPEND to be executed")
    assert setup.run("sync").returncode == 0
    assert setup.run("verify").returncode == 65


def test_without_uidplus_late_duplicates_are_named_not_expunged(
    tmp_path: Path, make_server: Callable[..., DovecotServer], make_mirror: MakeMirror
) -> None:
    server = make_server(drop_capabilities=("UIDPLUS",))
    mirror = make_mirror(destination=server)
    total = 4
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i, size=1500)) for i in range(total)])
    with FaultProxy(server.host, server.port) as proxy:
        setup = _stall_setup(tmp_path, mirror, proxy, "1h")
        first = _stall_then_resume(setup, proxy)
        assert first.returncode == TEMPFAIL, first.stdout + first.stderr
        proxy.release_held()
        _wait_for(lambda: _count(mirror) == 2 * total, "the late APPEND to be executed")
        second = setup.run("sync")
    assert second.returncode == TEMPFAIL, second.stdout + second.stderr
    assert "lacks UIDPLUS" in second.stdout and "delete them by hand" in second.stdout, second.stdout
    assert _count(mirror) == 2 * total  # named, never expunged blindly


def test_a_late_write_watch_that_sees_nothing_closes_when_it_expires(
    tmp_path: Path, mirror: Mirror, destination_proxy: FaultProxy
) -> None:
    total = 4
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i, size=1500)) for i in range(total)])
    setup = _stall_setup(tmp_path, mirror, destination_proxy, "2s")

    first = _stall_then_resume(setup, destination_proxy)
    assert first.returncode == TEMPFAIL, first.stdout + first.stderr
    destination_proxy.close_all()  # the stalled connection dies with its commands unexecuted
    time.sleep(2.5)  # past the window (a wait, not a measurement)
    second = setup.run("sync")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _count(mirror) == total
    assert setup.run("verify").returncode == 0


def test_late_write_watches_in_the_state_database(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    try:
        entry = SyncedMessage(7, None, "pending", "abc/100", 100, frozenset())
        store.mark_done("p", "INBOX", [SyncedMessage(3, 41, "done", "def/9", 9, frozenset())])
        store.watch_late_writes("p", "INBOX", [entry], 42, datetime.now(UTC) + timedelta(minutes=5))
        assert "INBOX" in store.folders_needing_attention("p")  # the fast path never skips a watched folder
        [watch] = store.late_write_watches("p", "INBOX")
        assert (watch.src_uid, watch.fingerprint, watch.dst_uid_floor) == (7, "abc/100", 42)
        assert store.claimed_dst_uids("INBOX") == {41}  # a folder not saved yet counts (cautious)
        store.close_late_write_watches([watch.id])
        assert store.late_write_watches("p", "INBOX") == []
        assert "INBOX" not in store.folders_needing_attention("p")
    finally:
        store.close()


# ------------------------------------------------------------------ 2. and 3. one writer per mailbox


def _pair_config(
    directory: Path, mirror: Mirror, sources: dict[str, LabUser], lock_dir: Path, name: str = "mailmirror.yaml"
) -> Setup:
    """One pair per source user on the mirror's source server (named after its account), all into the
    mirror's destination mailbox."""
    text = (
        f"state: {{path: {directory / (name + '.state.db')}}}\n"
        f"daemon: {{lock_dir: {lock_dir}}}\n"
        "accounts:\n"
        + "".join(account_yaml(account, mirror.source_server, user, directory) for account, user in sources.items())
        + account_yaml("dst", mirror.dest_server, mirror.dst_user, directory)
        + "pairs:\n"
        + "".join(f"  {account}:\n    source: {account}\n    destination: dst\n" for account in sources)
    )
    return _write(directory, text, name)


def test_a_pass_into_a_mailbox_another_process_writes_exits_75_naming_the_holder(
    tmp_path: Path, mirror: Mirror
) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(3)])
    setup = _pair_config(tmp_path, mirror, {"alice": mirror.src_user}, tmp_path / "locks")
    identity = load_config(setup.config_path).accounts["dst"].identity
    held = DestinationLock(tmp_path / "locks", identity, "dst", "pair 'other', state /elsewhere/state.db")
    assert held.acquire()
    try:
        result = setup.run("sync")
    finally:
        held.release()
    assert result.returncode == TEMPFAIL, result.stdout + result.stderr
    assert "is being written by mailmirror pid" in result.stderr and "/elsewhere/state.db" in result.stderr
    assert _count(mirror) == 0
    assert setup.run("sync").returncode == 0
    assert _count(mirror) == 3


def test_one_pair_under_two_state_databases_at_once_copies_each_message_once(
    tmp_path: Path, mirror: Mirror, destination_proxy: FaultProxy
) -> None:
    """The issue's path 2, made deterministic: the first process's APPEND is held (it waits, holding the
    destination) while a copy of the config with another state.path runs; then the APPEND goes through."""
    total = 30
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i, size=3000)) for i in range(total)])
    locks = tmp_path / "locks"  # what the default lock directory is for every config of a machine
    setups = []
    for name in ("a.yaml", "b.yaml"):
        text = (
            f"state: {{path: {tmp_path / (name + '.state.db')}}}\n"
            f"daemon: {{lock_dir: {locks}}}\n"
            "accounts:\n"
            + account_yaml("src", mirror.source_server, mirror.src_user, tmp_path)
            + _proxied_account("dst", destination_proxy, mirror.dst_user, tmp_path, "60s")
            + "pairs:\n  test:\n    source: src\n    destination: dst\n    transfer: {workers: 1}\n"
        )
        setups.append(_write(tmp_path, text, name))
    first, second = setups

    destination_proxy.inject(Fault("up", pattern=b" APPEND ", action="hold", once=True))
    running = _Background(first)
    _wait_for(lambda: destination_proxy.triggered == 1, "the first process's APPEND to be held")
    meanwhile = second.run("sync")
    assert meanwhile.returncode == TEMPFAIL, meanwhile.stdout + meanwhile.stderr
    said = " ".join(meanwhile.stderr.split())  # the console wraps long lines
    assert "is being written by mailmirror pid" in said, said
    assert f"pair 'test' of {first.config_path}, state {tmp_path / 'a.yaml.state.db'}" in said, said
    destination_proxy.release_held()
    assert running.wait(timeout=120) == 0

    for setup in (second, first):
        again = setup.run("sync")
        assert again.returncode == 0, again.stdout + again.stderr
        verify = setup.run("verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    assert _count(mirror) == total


def test_two_pairs_into_one_destination_in_parallel_copy_each_message_once(tmp_path: Path, mirror: Mirror) -> None:
    quote = mirror.source_server.add_user()
    when = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)  # the shared five are the same message in every respect
    alice_messages = [SeedMessage(simple_message(i, size=2000), internaldate=when) for i in range(40)]
    quote_messages = alice_messages[:5] + [SeedMessage(simple_message(100 + i, tag="quote")) for i in range(10)]
    seed(mirror.src, "INBOX", alice_messages)
    quote_client = mirror.source_server.connect(quote)
    try:
        seed(quote_client, "INBOX", quote_messages)
    finally:
        quote_client.logout()
    setup = _pair_config(tmp_path, mirror, {"alice": mirror.src_user, "quote": quote}, tmp_path / "locks")
    result = setup.run("sync", "-j", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _count(mirror) == 40 + 10  # the 5 byte-identical ones once
    for pair in ("alice", "quote"):
        verify = setup.run("verify", pair)
        assert verify.returncode == 0, verify.stdout + verify.stderr


class _Background:
    def __init__(self, setup: Setup) -> None:
        env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "daemon")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailmirror", "-c", str(setup.config_path), "sync"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait(self, timeout: float) -> int:
        self.proc.communicate(timeout=timeout)
        return self.proc.returncode


# ------------------------------------------------------------------------ 4. one mailbox, two names

SAME_MAILBOX = """\
state: {{path: state.db}}
accounts:
  a: {{host: 127.0.0.1, port: 143, tls: none, username: alice, password: {{env: X}}}}
  b: {{host: {host}, {port}tls: starttls, username: {user}, password: {{env: X}}}}
  other: {{host: mail.example.org, username: alice, password: {{env: X}}}}
pairs:
  backup:
    source: a
    destination: {destination}
    folders: {{under: Backup}}
"""


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("localhost", 143, "alice"), ("127.0.0.1", 143, "alice")),
        (("::1", 993, "alice"), ("[::1]", 993, "Alice")),
        (("localhost", 993, "alice"), ("::ffff:127.0.0.1", 993, "alice")),
        (("IMAP.Example.org.", 993, "alice"), ("imap.example.org", 993, " alice")),
        (("2001:DB8::1", 993, "a"), ("2001:db8:0::1", 993, "a")),
    ],
)
def test_spellings_of_one_mailbox_are_one_identity(one: tuple[str, int, str], other: tuple[str, int, str]) -> None:
    assert mailbox_identity(*one) == mailbox_identity(*other)
    assert mailbox_identity(*one).key == mailbox_identity(*other).key


@pytest.mark.parametrize(
    "other",
    [
        ("localhost", 1143, "alice"),
        ("imap.example.org", 143, "alice"),
        ("localhost", 143, "bob"),
        ("127.0.0.2", 143, "alice"),
    ],
)
def test_other_mailboxes_are_other_identities(other: tuple[str, int, str]) -> None:
    assert mailbox_identity("127.0.0.1", 143, "alice") != mailbox_identity(*other)


def test_passes_of_one_process_into_one_mailbox_take_turns(tmp_path: Path) -> None:
    identity = mailbox_identity("localhost", 143, "alice")
    first = DestinationLock(tmp_path, identity, "dst", "pair 'a'")
    second = DestinationLock(tmp_path, identity, "dst", "pair 'b'")
    assert first.acquire()
    stop_waiting = iter([False, True])
    assert not second.acquire(lambda: next(stop_waiting))  # waited (twice half a second), then asked to stop
    first.release()
    assert second.acquire()
    second.release()


def _validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    setup = _write(tmp_path, text)
    return setup.run("config", "validate")


@pytest.mark.parametrize(
    ("host", "port", "user"),
    [
        ("localhost", "", "alice"),
        ("LOCALHOST.", "port: 143, ", "Alice"),
        ('"::1"', "", "alice"),
        ('"[::1]"', "", "alice"),
    ],
)
def test_a_pair_from_a_mailbox_into_itself_is_refused(tmp_path: Path, host: str, port: str, user: str) -> None:
    result = _validate(tmp_path, SAME_MAILBOX.format(host=host, port=port, user=user, destination="b"))
    assert result.returncode == 78, result.stdout + result.stderr
    assert "mailmirror.yaml:9: pairs.backup.destination: pair 'backup'" in result.stderr, result.stderr
    assert "same mailbox" in result.stderr and "Point the destination at another mailbox" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("host", "port"), [("localhost", "port: 1143, "), ("127.0.0.2.example", "")])
def test_other_mailboxes_are_not_refused(tmp_path: Path, host: str, port: str) -> None:
    result = _validate(tmp_path, SAME_MAILBOX.format(host=host, port=port, user="alice", destination="b"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "same mailbox" not in result.stderr


def test_two_account_names_for_one_mailbox_get_a_warning(tmp_path: Path) -> None:
    result = _validate(tmp_path, SAME_MAILBOX.format(host="localhost", port="", user="alice", destination="other"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mailmirror.yaml:4: accounts.b: the same mailbox (alice@localhost) as account 'a'" in result.stderr
