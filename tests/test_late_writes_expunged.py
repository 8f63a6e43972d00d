"""A message deleted on the source while its late write is watched for, against Dovecot.

Found by the model machine: the pass after the expunge forgot the message's row (mirror: deleted our
copy too); when the old APPEND then ran, the watch had no copy of ours to compare with and closed at its
deadline: the late copy stayed (a duplicate; mirroring, a copy of a message the source no longer has)
and the pass said exactly once. The row (and, mirroring, our copy) now stays until the watch ends.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from mailmirror.config.config_file import load_config
from mailmirror.lab.dovecot import SeedMessage, seed
from mailmirror.state.store import StateStore
from tests.support import Mirror, message_count, simple_message

pytestmark = pytest.mark.dovecot


@pytest.mark.parametrize("mode", ["keep", "mirror"])
def test_a_message_deleted_on_the_source_during_a_late_write_window_gets_its_late_copy_removed(
    mode: str, mirror: Mirror
) -> None:
    seed(mirror.src, "Work", [SeedMessage(simple_message(i)) for i in range(3)])
    deletions = f"deletions: {{destination: {mode}, max_share: 1.0}}"
    setup = mirror.setup(pair_options=deletions)
    assert setup.sync().error is None
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    try:  # one append of a lost connection was copied again: watched for its late write
        watched = store.messages("test", "Work")[min(store.messages("test", "Work"))]
        floor = int(mirror.dst.folder_status("Work", ["UIDNEXT"])[b"UIDNEXT"])
        store.watch_late_writes("test", "Work", [watched], floor, datetime.now(UTC) + timedelta(hours=1))
    finally:
        store.close()
    mirror.src.select_folder("Work")  # the user deletes the message
    mirror.src.delete_messages([watched.src_uid])
    mirror.src.expunge()
    mirror.src.close_folder()

    second = setup.sync()
    [work] = [folder for folder in second.folders if folder.source == "Work"]
    assert second.error is None and work.unresolved is not None and work.deleted == 0
    assert message_count(mirror.dst, "Work") == 3  # mirroring too: our copy stays while the watch is open

    mirror.dst.select_folder("Work", readonly=True)  # the old APPEND runs now: the same bytes
    ours = mirror.dst.fetch([watched.dst_uid], ["BODY.PEEK[]", "INTERNALDATE"])[watched.dst_uid]
    mirror.dst.close_folder()
    mirror.dst.append("Work", ours[b"BODY[]"], [], ours[b"INTERNALDATE"])
    with contextlib.closing(sqlite3.connect(config.state.path)) as db, db:  # and the window ends
        db.execute("UPDATE late_writes SET deadline = ?", [(datetime.now(UTC) - timedelta(minutes=1)).isoformat()])

    third = setup.sync()
    [work] = [folder for folder in third.folders if folder.source == "Work"]
    assert third.error is None and third.copied == 0
    assert work.late_duplicates_removed == 1, "the late copy stayed: the watch had no copy of ours to compare with"
    assert work.unresolved is None
    assert message_count(mirror.dst, "Work") == (3 if mode == "keep" else 2)
    fourth = setup.sync()
    assert fourth.error is None and fourth.copied == 0 and not any(f.unresolved for f in fourth.folders)
    assert message_count(mirror.dst, "Work") == (3 if mode == "keep" else 2)
