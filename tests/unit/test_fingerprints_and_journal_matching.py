"""Pure logic: message fingerprints and journal matching (folder mapping: test_mapping.py)."""

from __future__ import annotations

from mailmirror.engine.identity import fingerprint, parse_headers, without_size
from mailmirror.engine.planner import DestinationMessage, match_pending
from mailmirror.state.records import SyncedMessage

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
