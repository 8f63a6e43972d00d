"""One pass of imapsync's default behaviour, against real Dovecot servers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from imapclient import IMAPClient

from mailmirror.lab.corpus import sample_mailbox
from mailmirror.lab.dovecot import SeedMessage, seed, seed_mailbox
from mailmirror.state.records import SyncedMessage
from mailmirror.state.store import StateStore
from tests.conftest import MakeMirror, MakeServer
from tests.support import Mirror, folder_contents, message_count, simple_message

pytestmark = pytest.mark.dovecot


def snapshot_flags(client: IMAPClient) -> dict[str, dict[int, frozenset[bytes]]]:
    result = {}
    for flags, _delimiter, name in client.list_folders():
        if b"\\Noselect" in flags:
            continue
        client.select_folder(name, readonly=True)
        result[name] = {uid: frozenset(d[b"FLAGS"]) for uid, d in client.fetch(client.search(), ["FLAGS"]).items()}
    return result


def test_first_pass_mirrors_every_folder_and_verify_is_clean(mirror: Mirror) -> None:
    mailbox = sample_mailbox(seed=7)
    seed_mailbox(mirror.src, mailbox)
    mirror.src.unsubscribe_folder("Отчёты")
    flags_before = snapshot_flags(mirror.src)
    setup = mirror.setup()

    result = setup.run("sync")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Complete: every selected source message is on the destination" in result.stdout

    verify = setup.run("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "No differences" in verify.stdout
    assert snapshot_flags(mirror.src) == flags_before, "the source must not change (\\Seen included)"
    assert folder_contents(mirror.dst) == folder_contents(mirror.src)
    destination_folders = {name for _f, _d, name in mirror.dst.list_folders()}
    assert {"Empty Folder", "Reçus/Été", "Отчёты", "Archive/2024/Q1", "Projects/Client Work"} <= destination_folders
    subscribed = {name for _f, _d, name in mirror.dst.list_sub_folders()}
    assert "Projects/Client Work" in subscribed and "Отчёты" not in subscribed
    total = sum(len(messages) for messages in mailbox.values())
    assert total >= 200


def test_second_pass_copies_nothing_then_exactly_the_new_messages(mirror: Mirror) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(30)])
    seed(mirror.src, "Work", [SeedMessage(simple_message(100 + i)) for i in range(10)])
    setup = mirror.setup()
    assert setup.sync().copied == 40

    second = setup.sync()
    assert (second.copied, second.total("adopted"), second.failed) == (0, 0, 0)

    seed(mirror.src, "INBOX", [SeedMessage(simple_message(200 + i)) for i in range(3)])
    seed(mirror.src, "Work", [SeedMessage(simple_message(300 + i)) for i in range(2)])
    third = setup.sync()
    assert third.copied == 5
    assert message_count(mirror.dst, "INBOX") == 33 and message_count(mirror.dst, "Work") == 12
    assert setup.verify().clean


def test_flag_changes_on_the_source_reach_the_destination(mirror: Mirror) -> None:
    uids = seed(mirror.src, "INBOX", [SeedMessage(simple_message(i), flags=("\\Seen",)) for i in range(6)])
    setup = mirror.setup()
    setup.sync()
    mirror.src.select_folder("INBOX")
    mirror.src.add_flags(uids[:2], ["\\Flagged", "$Important"])
    mirror.src.remove_flags(uids[2:3], ["\\Seen"])
    report = setup.sync()
    assert report.total("flags_updated") == 3 and report.copied == 0
    assert setup.verify().clean


def test_destination_holding_half_the_messages_gets_no_duplicates(mirror: Mirror) -> None:
    when = datetime(2023, 3, 4, 5, 6, 7, tzinfo=UTC)
    messages = [SeedMessage(simple_message(i, message_id=i % 5 != 0), ("\\Seen",), when) for i in range(40)]
    seed(mirror.src, "INBOX", messages)
    seed(mirror.src, "Archive", messages[:10])
    seed(mirror.dst, "INBOX", messages[::2])  # copied earlier by another tool
    setup = mirror.setup()

    report = setup.sync()
    assert report.total("adopted") == 20 and report.copied == 30
    assert message_count(mirror.dst, "INBOX") == 40
    verdict = setup.verify()
    assert verdict.clean, verdict


def test_state_database_lost_between_passes_copies_nothing_again(mirror: Mirror) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(12)])
    setup = mirror.setup()
    setup.sync()
    for suffix in ("", "-wal", "-shm"):
        (setup.directory / f"state.db{suffix}").unlink(missing_ok=True)
    report = setup.sync()
    assert report.copied == 0 and report.total("adopted") == 12
    assert message_count(mirror.dst) == 12


def test_message_refused_by_the_destination_is_reported_and_the_rest_copied(mirror: Mirror) -> None:
    small_destination = mirror.dest_server.add_user(max_mail_size=100_000)
    seed(
        mirror.src,
        "INBOX",
        [SeedMessage(simple_message(1)), SeedMessage(simple_message(2, size=300_000)), SeedMessage(simple_message(3))],
    )
    setup = mirror.setup(destination_user=small_destination)
    result = setup.run("sync")
    assert result.returncode == 75, result.stdout + result.stderr
    assert "Mail size is larger than the maximum size allowed" in result.stdout
    assert "UID 2" in result.stdout
    with mirror.dest_server.connect(small_destination) as client:
        assert message_count(client) == 2
    store = StateStore(setup.directory / "state.db")
    [failure] = store.failures("test")
    store.close()
    assert failure.src_uid == 2 and "[LIMIT]" in failure.reason
    assert setup.run("verify").returncode == 65  # the refused message is missing: verify says so


def test_crash_between_append_and_confirmation_leaves_each_message_once(
    monkeypatch: pytest.MonkeyPatch, mirror: Mirror
) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i, message_id=i % 3 != 0)) for i in range(25)])
    setup = mirror.setup()

    original = StateStore.mark_done

    def crash(store: StateStore, pair: str, folder: str, entries: Iterable[SyncedMessage]) -> None:
        entries = list(entries)
        if entries:
            raise KeyboardInterrupt("simulated crash after the APPEND, before the state recorded it")
        original(store, pair, folder, entries)

    with monkeypatch.context() as patch:
        patch.setattr(StateStore, "mark_done", crash)
        with pytest.raises(KeyboardInterrupt):
            setup.sync()
    assert message_count(mirror.dst) == 25  # appended, but the state only knows them as pending

    report = setup.sync()
    assert report.copied == 0
    assert message_count(mirror.dst) == 25
    assert setup.verify().clean


def test_without_uidplus_and_multiappend_copies_exactly_once(make_server: MakeServer, make_mirror: MakeMirror) -> None:
    plain = make_server(drop_capabilities=("UIDPLUS", "MULTIAPPEND", "CONDSTORE", "QRESYNC"))
    mirror = make_mirror(destination=plain)
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i, message_id=i % 4 != 0)) for i in range(15)])
    setup = mirror.setup()
    assert setup.sync().copied == 15
    mirror.src.select_folder("INBOX")
    mirror.src.add_flags([1, 2], ["\\Answered"])
    again = setup.sync()
    assert again.copied == 0 and again.total("flags_updated") == 2
    assert setup.verify().clean


def test_cyrus_style_destination_gets_translated_names(make_server: MakeServer, make_mirror: MakeMirror) -> None:
    mirror = make_mirror(destination=make_server(separator=".", prefix="INBOX."))
    seed(mirror.src, "Archive/2024", [SeedMessage(simple_message(1))])
    seed(mirror.src, "Reçus/Été", [SeedMessage(simple_message(2))])
    setup = mirror.setup()
    report = setup.sync()
    assert {(f.source, f.destination) for f in report.folders} >= {
        ("Archive/2024", "INBOX.Archive.2024"),
        ("Reçus/Été", "INBOX.Reçus.Été"),
    }
    assert setup.verify().clean


def test_dry_run_changes_nothing(mirror: Mirror) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(5)])
    seed(mirror.src, "Lists/Python", [SeedMessage(simple_message(10 + i)) for i in range(3)])
    setup = mirror.setup()
    before = folder_contents(mirror.dst)
    result = setup.run("sync", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Dry run: nothing was changed" in result.stdout
    assert folder_contents(mirror.dst) == before


def test_internaldate_and_bare_lf_message_survive(mirror: Mirror) -> None:
    when = datetime(2019, 12, 31, 23, 59, 58, tzinfo=UTC) - timedelta(hours=5)
    bare_lf = b"From: a@example.org\nSubject: bare LF\nMessage-ID: <lf@example.org>\n\nline 1\nline 2\n"
    eight_bit = "From: b@example.org\r\nSubject: Grüße aus Köln\r\n\r\nHallo\r\n".encode()
    seed(mirror.src, "INBOX", [SeedMessage(bare_lf, (), when), SeedMessage(eight_bit, ("\\Flagged",), when)])
    setup = mirror.setup()
    setup.sync()
    mirror.dst.normalise_times = False
    mirror.dst.select_folder("INBOX", readonly=True)
    dates = {d[b"INTERNALDATE"] for d in mirror.dst.fetch(mirror.dst.search(), ["INTERNALDATE"]).values()}
    assert dates == {when}
    assert setup.verify().clean
