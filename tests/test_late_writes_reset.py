"""Late-write watches across a destination UIDVALIDITY reset (review h12, finding 3), against Dovecot.

The reset drops the folder's UID map (rebuilt by fingerprint), but a late write of a lost APPEND can still
land in the folder: the watch stays (its UID floor then means nothing: the whole new folder is looked at),
the passes stay unproven (exit 75) until it ends, and the late copy is removed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from imapclient import IMAPClient

from mailmirror.config.config_file import load_config
from mailmirror.lab.dovecot import SeedMessage, seed
from mailmirror.state.store import StateStore
from tests.support import Mirror, message_count, simple_message

pytestmark = pytest.mark.dovecot


def _recreate(client: IMAPClient, folder: str) -> list[bytes]:
    """The folder deleted and made again with the same messages (a restore): a new UIDVALIDITY."""
    before = client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"]
    client.select_folder(folder, readonly=True)
    fetched = client.fetch(client.search(), ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
    messages = [fetched[uid] for uid in sorted(fetched)]
    client.close_folder()
    client.delete_folder(folder)
    client.create_folder(folder)
    for data in messages:
        flags = [flag for flag in data[b"FLAGS"] if flag != b"\\Recent"]
        client.append(folder, data[b"BODY[]"], flags, data[b"INTERNALDATE"])
    bodies = [data[b"BODY[]"] for data in messages]
    assert client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"] != before
    return bodies


def test_a_watch_survives_a_destination_uidvalidity_reset_and_removes_the_late_copy(mirror: Mirror) -> None:
    seed(mirror.src, "Work", [SeedMessage(simple_message(i)) for i in range(3)])
    setup = mirror.setup()
    assert setup.sync().error is None
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    try:  # one append of a lost connection was copied again: watched for its late write
        watched = store.messages("test", "Work")[min(store.messages("test", "Work"))]
        floor = int(mirror.dst.folder_status("Work", ["UIDNEXT"])[b"UIDNEXT"])
        store.watch_late_writes("test", "Work", [watched], floor, datetime.now(UTC) + timedelta(hours=1))
    finally:
        store.close()

    bodies = _recreate(mirror.dst, "Work")
    second = setup.sync()  # the map is rebuilt by fingerprint; the watch stays open
    assert second.error is None and second.copied == 0
    [work] = [folder for folder in second.folders if folder.source == "Work"]
    assert work.unresolved is not None, "the pass claimed exactly once while a late write may still land"

    mirror.dst.append("Work", bodies[0])  # the stalled server runs the old APPEND now (UIDs from 1 again)
    assert message_count(mirror.dst, "Work") == 4
    third = setup.sync()
    assert third.error is None and third.copied == 0
    [work] = [folder for folder in third.folders if folder.source == "Work"]
    assert work.late_duplicates_removed == 1
    assert message_count(mirror.dst, "Work") == 3
    assert setup.verify().clean


@pytest.mark.parametrize("side", ["source", "destination"])
def test_a_late_copy_that_landed_in_the_window_is_removed_after_a_uidvalidity_reset_once_the_window_ended(
    side: str, mirror: Mirror
) -> None:
    """Found by the model machine: the late copy lands within the window, then a UIDVALIDITY reset, and the
    first pass after both came at a time the window had ended: its check before the plan (map not yet
    rebuilt, so no copy of ours to compare with) closed the watch as expired; the duplicate stayed for good
    and the pass claimed exactly once."""
    seed(mirror.src, "Work", [SeedMessage(simple_message(i)) for i in range(3)])
    setup = mirror.setup()
    assert setup.sync().error is None
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    try:  # one append of a lost connection was copied again; the window it was watched for has ended
        watched = store.messages("test", "Work")[min(store.messages("test", "Work"))]
        floor = int(mirror.dst.folder_status("Work", ["UIDNEXT"])[b"UIDNEXT"])
        store.watch_late_writes("test", "Work", [watched], floor, datetime.now(UTC) - timedelta(minutes=1))
    finally:
        store.close()
    mirror.dst.select_folder("Work", readonly=True)  # the old APPEND ran within the window: the same bytes
    ours = mirror.dst.fetch([watched.dst_uid], ["BODY.PEEK[]", "INTERNALDATE"])[watched.dst_uid]
    mirror.dst.close_folder()
    mirror.dst.append("Work", ours[b"BODY[]"], [], ours[b"INTERNALDATE"])
    assert message_count(mirror.dst, "Work") == 4

    _recreate(mirror.src if side == "source" else mirror.dst, "Work")
    second = setup.sync()
    assert second.error is None and second.copied == 0
    [work] = [folder for folder in second.folders if folder.source == "Work"]
    assert work.late_duplicates_removed == 1, "the late copy stayed: the watch was closed before the map was rebuilt"
    assert work.unresolved is None
    assert message_count(mirror.dst, "Work") == 3
    assert setup.verify().clean
