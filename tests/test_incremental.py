"""Incremental passes cost what changed; opt-in deletions; against real Dovecot servers."""

from __future__ import annotations

import imaplib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from imapclient import IMAPClient

from mailmirror.lab.dovecot import DovecotServer, LabUser, SeedMessage, seed
from tests.support import Mirror, Setup, make_setup, message_count, simple_message

pytestmark = pytest.mark.dovecot

MakeServer = Callable[..., DovecotServer]


@contextmanager
def counting_commands() -> Iterator[Counter[str]]:
    """Count the IMAP commands this process sends (LOGIN, LIST, SELECT, UID FETCH, ...)."""
    counts: Counter[str] = Counter()
    original = imaplib.IMAP4._command

    def counted(self: imaplib.IMAP4, name: str, *args: object) -> object:
        first = args[0] if args and name == "UID" else None
        counts[f"UID {first}" if isinstance(first, str) else name] += 1
        return original(self, name, *args)

    imaplib.IMAP4._command = counted  # type: ignore[method-assign,assignment]
    try:
        yield counts
    finally:
        imaplib.IMAP4._command = original  # type: ignore[method-assign]


def seed_folders(client: IMAPClient, folders: int, per_folder: int, start: int = 0) -> None:
    for f in range(folders):
        messages = [SeedMessage(simple_message(start + f * 1000 + i), ("\\Seen",)) for i in range(per_folder)]
        seed(client, f"Folder {f:02d}", messages)


def test_no_change_pass_opens_no_folder_and_costs_the_same_for_any_size(mirror: Mirror) -> None:
    seed_folders(mirror.src, folders=3, per_folder=5)
    setup = mirror.setup()
    setup.sync()
    with counting_commands() as small:
        report = setup.sync()
    assert all(folder.unchanged for folder in report.folders)

    seed_folders(mirror.src, folders=12, per_folder=40, start=50_000)
    setup.sync()
    with counting_commands() as large:
        report = setup.sync()
    assert report.copied == 0 and all(folder.unchanged for folder in report.folders)
    assert large == small, "a no-change pass must not grow with the mailbox"
    assert "SELECT" not in large and "EXAMINE" not in large and "UID FETCH" not in large


def test_only_the_changed_folder_is_opened_and_new_mail_is_a_uid_range(mirror: Mirror) -> None:
    seed_folders(mirror.src, folders=4, per_folder=30)
    setup = mirror.setup()
    setup.sync()
    seed(mirror.src, "Folder 02", [SeedMessage(simple_message(900 + i)) for i in range(5)])
    with counting_commands() as counts:
        report = setup.sync()
    opened = [folder.source for folder in report.folders if not folder.unchanged]
    assert opened == ["Folder 02"] and report.copied == 5
    assert counts["EXAMINE"] == 1
    assert message_count(mirror.dst, "Folder 02") == 35
    assert setup.verify().clean


def test_two_percent_flag_changes_propagate_through_changedsince(mirror: Mirror) -> None:
    uids = seed(mirror.src, "INBOX", [SeedMessage(simple_message(i), ("\\Seen",)) for i in range(250)])
    setup = mirror.setup()
    setup.sync()
    mirror.src.select_folder("INBOX")
    mirror.src.add_flags(uids[10:13], ["\\Flagged"])
    mirror.src.remove_flags(uids[100:102], ["\\Seen"])
    report = setup.sync()
    assert report.total("flags_updated") == 5 and report.copied == 0
    assert setup.verify().clean


def test_mirror_deletes_exactly_what_the_source_expunged(mirror: Mirror) -> None:
    uids = seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(30)])
    seed(mirror.dst, "INBOX", [SeedMessage(simple_message(500))])  # not mailmirror's: never deleted
    setup = mirror.setup(pair_options="deletions: {destination: mirror}")
    setup.sync()
    assert message_count(mirror.dst) == 31
    mirror.src.select_folder("INBOX")
    mirror.src.delete_messages(uids[3:6])
    mirror.src.expunge()
    report = setup.sync()
    assert report.total("deleted") == 3
    assert message_count(mirror.dst) == 28
    verdict = setup.verify()
    assert verdict.clean and sum(len(f.extra) for f in verdict.folders) == 1


def test_deletion_guard_refuses_to_empty_half_a_folder_unless_forced(mirror: Mirror) -> None:
    uids = seed(mirror.src, "INBOX", [SeedMessage(simple_message(i)) for i in range(20)])
    setup = mirror.setup(pair_options="deletions: {destination: mirror}")
    setup.sync()
    mirror.src.select_folder("INBOX")
    mirror.src.delete_messages(uids[:10])
    mirror.src.expunge()
    result = setup.run("sync")
    assert result.returncode == 75, result.stdout + result.stderr
    assert "refusing to delete 10 of 20 messages" in result.stdout + result.stderr
    assert message_count(mirror.dst) == 20
    forced = setup.run("sync", "--force-deletions")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert message_count(mirror.dst) == 10


def test_move_deletes_from_the_source_only_what_the_destination_confirmed(mirror: Mirror) -> None:
    small_destination = mirror.dest_server.add_user(max_mail_size=100_000)
    messages = [SeedMessage(simple_message(i)) for i in range(8)] + [SeedMessage(simple_message(99, size=200_000))]
    seed(mirror.src, "Work", messages)
    setup = make_setup(
        mirror.source_server,
        mirror.src_user,
        mirror.dest_server,
        small_destination,
        pair_options="deletions: {source: after_copy}",
    )
    report = setup.sync()
    assert report.copied == 8 and report.failed == 1 and report.total("source_deleted") == 8
    assert message_count(mirror.src, "Work") == 1  # the refused one stays where it is
    with mirror.dest_server.connect(small_destination) as client:
        assert message_count(client, "Work") == 8
    again = setup.sync()
    assert again.copied == 0 and again.total("source_deleted") == 0


def test_servers_without_condstore_and_list_status_take_the_slow_path_correctly(
    make_server: MakeServer,
    dest_server: DovecotServer,
    dst_user: LabUser,
    dst_client: IMAPClient,
) -> None:
    plain = make_server(drop_capabilities=("CONDSTORE", "QRESYNC", "LIST-STATUS", "LIST-EXTENDED"))
    user = plain.add_user()
    with plain.connect(user) as client:
        uids = seed(client, "INBOX", [SeedMessage(simple_message(i)) for i in range(20)])
        setup = make_setup(plain, user, dest_server, dst_user, pair_options="deletions: {destination: mirror}")
        assert setup.sync().copied == 20
        assert setup.sync().copied == 0
        client.select_folder("INBOX")
        client.add_flags(uids[:2], ["\\Answered"])
        client.delete_messages(uids[-2:])
        client.expunge()
        seed(client, "INBOX", [SeedMessage(simple_message(100 + i)) for i in range(3)])
    report = setup.sync()
    assert (report.copied, report.total("flags_updated"), report.total("deleted")) == (3, 2, 2)
    assert message_count(dst_client) == 21
    assert setup.verify().clean


def test_full_pass_rereads_everything_and_finds_nothing_to_do(mirror: Mirror) -> None:
    seed_folders(mirror.src, folders=2, per_folder=10)
    setup: Setup = mirror.setup()
    setup.sync()
    result = setup.run("sync", "--full")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 messages copied" in result.stdout


def test_folder_renamed_on_the_source_is_renamed_on_the_destination_not_copied_again(mirror: Mirror) -> None:
    seed(mirror.src, "Projects", [SeedMessage(simple_message(i)) for i in range(12)])
    seed(mirror.src, "Projects/Old", [SeedMessage(simple_message(100 + i)) for i in range(4)])
    setup = mirror.setup()
    setup.sync()
    mirror.src.rename_folder("Projects", "Clients")
    report = setup.sync()
    assert report.copied == 0
    assert [f.renamed_from for f in report.folders if f.source == "Clients"] == ["Projects"]
    names = {name for _flags, _delimiter, name in mirror.dst.list_folders()}
    assert {"Clients", "Clients/Old"} <= names and "Projects" not in names
    assert message_count(mirror.dst, "Clients") == 12 and message_count(mirror.dst, "Clients/Old") == 4
    assert setup.verify().clean


def test_destination_folder_of_a_deleted_source_folder_goes_only_when_asked_and_safe(mirror: Mirror) -> None:
    for index, name in enumerate(("A", "B", "C", "D", "E", "F")):
        seed(mirror.src, name, [SeedMessage(simple_message(10 * index + i)) for i in range(2)])
    options = "deletions: {delete_missing_folders: true, max_share: 0.3}"
    setup = mirror.setup(pair_options=options)
    setup.sync()
    seed(mirror.dst, "B", [SeedMessage(simple_message(999))])  # someone else's message in B
    mirror.src.delete_folder("A")
    mirror.src.delete_folder("B")
    result = setup.run("sync")
    names = {name for _flags, _delimiter, name in mirror.dst.list_folders()}
    assert "A" not in names and "B" in names, result.stdout + result.stderr
    assert result.returncode == 75 and "holds 1 messages mailmirror did not copy" in result.stdout

    for name in ("C", "D", "E"):
        mirror.src.delete_folder(name)
    refused = setup.run("sync")
    assert refused.returncode == 75 and "refusing to delete" in refused.stdout + refused.stderr
    assert {"C", "D", "E"} <= {name for _flags, _delimiter, name in mirror.dst.list_folders()}
