"""Late-write watches and source folders merged into one destination folder (review h12, finding 2).

A watch of folder A must never take folder B's fresh copy of a byte-identical message for A's own late
write in the gap between B's APPEND and B marking it done: B's row is still pending (no destination UID),
so no state row claims the copy yet.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailmirror.config.config_file import load_config
from mailmirror.engine.pair_pass import PairPass
from mailmirror.lab.dovecot import SeedMessage, seed
from mailmirror.state.store import StateStore
from tests.support import Mirror, message_count, simple_message

pytestmark = pytest.mark.dovecot

MERGED = """
folders:
  map:
    A: Merged
    B: Merged
"""


def test_a_watch_never_removes_another_folders_unconfirmed_copy_of_the_same_message(mirror: Mirror) -> None:
    same = simple_message(7)
    # a fixed INTERNALDATE: the hand-made copy below must not differ from the source by the clock's second
    received = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    seed(mirror.src, "A", [SeedMessage(same, internaldate=received)])
    seed(mirror.src, "B", [SeedMessage(same, internaldate=received)])
    setup = mirror.setup(pair_options=MERGED)
    first = setup.sync()
    assert first.error is None and message_count(mirror.dst, "Merged") == 1  # B adopts A's copy
    # B's pass appended a copy of its own (as when both folders were planned at once) and has not marked it
    # done yet: its row is pending, with the UIDNEXT before that append as its floor
    floor = int(mirror.dst.folder_status("Merged", ["UIDNEXT"])[b"UIDNEXT"])
    mirror.dst.append("Merged", same, msg_time=received)
    assert message_count(mirror.dst, "Merged") == 2

    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    try:
        store.db.execute(
            "UPDATE messages SET status = 'pending', dst_uid = NULL, dst_uid_floor = ? "
            "WHERE pair = 'test' AND src_folder = 'B'",
            [floor],
        )
        store.db.conn.commit()
        # A lost an append of the same message once: it watches for its late write
        [a_row] = store.messages("test", "A").values()
        store.watch_late_writes("test", "A", [a_row], 1, datetime.now(UTC) + timedelta(hours=1))
        report = PairPass("test", config.effective_pairs()["test"], config, store, only_folders={"A"}).run()
    finally:
        store.close()
    assert report.error is None
    assert sum(f.late_duplicates_removed for f in report.folders) == 0
    assert message_count(mirror.dst, "Merged") == 2  # B's copy is still there
    [folder] = report.folders
    assert folder.unresolved is not None  # A's watch stays open: nothing proven yet

    second = setup.sync()  # B resolves its pending row: found on the destination, done
    assert second.error is None and second.copied == 0
    assert message_count(mirror.dst, "Merged") == 2
    assert setup.verify().clean
