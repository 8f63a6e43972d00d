"""Pure logic: message fingerprints, folder name translation and selection."""

from __future__ import annotations

import pytest

from mailmirror.identity import fingerprint, parse_headers, without_size
from mailmirror.imap import Folder
from mailmirror.mapping import Namespace, map_folders, pattern_matches, sync_order
from mailmirror.planner import DestinationMessage
from mailmirror.state import SyncedMessage
from mailmirror.sync import match_pending

HEADER = b"Message-ID: <abc@example.org>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0100\r\nSubject: hi\r\n\r\n"


def test_fingerprint_ignores_angle_brackets_folding_and_date_format() -> None:
    other = b"message-id:\r\n  abc@example.org\r\nDATE: Mon, 01 Jan 2024 09:00:00 +0000\r\n\r\n"
    assert fingerprint(HEADER, 10) == fingerprint(other, 10)
    assert fingerprint(HEADER, 10) != fingerprint(HEADER, 11)
    assert without_size(fingerprint(HEADER, 10)) == without_size(fingerprint(HEADER, 11))


def test_message_without_message_id_falls_back_to_other_headers() -> None:
    one = b"From: a@x\r\nSubject: one\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
    two = b"From: a@x\r\nSubject: two\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
    assert fingerprint(one, 5) != fingerprint(two, 5)


def test_eight_bit_header_is_kept_as_bytes() -> None:
    fields = parse_headers("Subject: Grüße\r\n".encode())
    assert fields["subject"] == ["Grüße".encode()]


def test_match_pending_finds_each_journalled_append_once() -> None:
    pending = [
        SyncedMessage(1, None, "pending", "x/10", 10, frozenset()),
        SyncedMessage(2, None, "pending", "x/10", 10, frozenset()),
        SyncedMessage(3, None, "pending", "y/10", 10, frozenset()),
    ]
    candidates = [DestinationMessage(50, "x/10", frozenset()), DestinationMessage(51, "y/12", frozenset())]
    found, missing = match_pending(pending, candidates)
    assert [(m.src_uid, m.dst_uid) for m in found] == [(1, 50), (3, 51)]
    assert [m.src_uid for m in missing] == [2]


@pytest.mark.parametrize(
    ("server_name", "source_ns", "destination_ns", "expected"),
    [
        ("INBOX", Namespace("/", ""), Namespace(".", "INBOX."), "INBOX"),
        ("Archive/2024", Namespace("/", ""), Namespace(".", "INBOX."), "INBOX.Archive.2024"),
        ("INBOX.Archive.2024", Namespace(".", "INBOX."), Namespace("/", ""), "Archive/2024"),
        ("Reçus/Été", Namespace("/", ""), Namespace("/", ""), "Reçus/Été"),
        ("a.b/c", Namespace("/", ""), Namespace(".", ""), "a_b.c"),
        ("Sent Items", Namespace("/", ""), Namespace(".", "INBOX."), "INBOX.Sent Items"),
    ],
)
def test_names_translate_between_separators_and_prefixes(
    server_name: str, source_ns: Namespace, destination_ns: Namespace, expected: str
) -> None:
    assert destination_ns.to_server(source_ns.to_neutral(server_name)) == expected


def folder(name: str, *flags: str) -> Folder:
    return Folder(name, "/", frozenset(flags))


def test_inbox_first_then_alphabetical() -> None:
    assert sync_order(["b", "INBOX", "a/x", "a"]) == ["INBOX", "a", "a/x", "b"]


def test_selection_then_explicit_map_then_special_use_automap() -> None:
    source = [folder("INBOX"), folder("Sent Messages", "\\Sent"), folder("Junk"), folder("Old", "\\HasChildren")]
    destination = [folder("INBOX"), folder("Sent", "\\Sent")]
    mappings = map_folders(
        source, destination, Namespace("/", ""), Namespace("/", ""), exclude=["Junk"], explicit={"Old": "Archive/Old"}
    )
    assert [(m.source, m.destination, m.rule) for m in mappings] == [
        ("INBOX", "INBOX", "default"),
        ("Old", "Archive/Old", "map"),
        ("Sent Messages", "Sent", "automap"),
    ]


def test_patterns_are_globs_or_regexes() -> None:
    assert pattern_matches("Archive/*", "Archive/2024")
    assert not pattern_matches("Archive", "Archive/2024")
    assert pattern_matches("re:^Arch", "Archive/2024")
