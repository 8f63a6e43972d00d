"""A failed message deleted on the source before any folder marker counted it, against Dovecot.

Found by the model machine (its third example this session): the folder had markers from an earlier pass,
a new message failed (here: refused by the destination) in a pass that did not finish the folder, and
the user deleted it. The next pass took the incremental listing: the message count matched the markers
(the message was never counted), so nothing looked for expunges, the failure was retried, the source did
not return the message, and the failure was recorded again, on every pass for ever (exit 75).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from imapclient import IMAPClient

from mailmirror.config.config_file import load_config
from mailmirror.engine.outcome import LogProgress
from mailmirror.engine.pair_pass import PairPass
from mailmirror.lab.dovecot import DovecotServer, LabUser, SeedMessage, seed
from mailmirror.state.store import StateStore
from tests.support import make_setup, message_count, simple_message

pytestmark = pytest.mark.dovecot


class _StopAfterFirstBatch(LogProgress):
    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def advance(self, pair: str, folder: str, messages: int, size: int) -> None:
        self.stop.set()


def _seed(client: IMAPClient, messages: list[bytes]) -> list[int]:
    return seed(client, "INBOX", [SeedMessage(m, (), datetime(2024, 1, 2, tzinfo=UTC)) for m in messages])


def test_a_failed_message_deleted_before_the_markers_counted_it_is_not_retried_for_ever(
    source_server: DovecotServer, src_user: LabUser, src_client: IMAPClient, dest_server: DovecotServer
) -> None:
    small = dest_server.add_user(max_mail_size=20_000)
    _seed(src_client, [simple_message(i) for i in range(1, 5)])
    setup = make_setup(source_server, src_user, dest_server, small, pair_options="transfer: {batch_messages: 3}")
    assert setup.sync().complete  # the folder's markers: 4 messages

    [too_big, *_] = _seed(src_client, [simple_message(10, size=50_000)] + [simple_message(i) for i in range(11, 16)])
    stop = threading.Event()
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    try:  # the first batch: the big one refused, then the pass stops before the folder is finished
        report = PairPass(
            "test", config.effective_pairs()["test"], config, store, _StopAfterFirstBatch(stop), stop=stop
        ).run()
    finally:
        store.close()
    assert report.failed == 1 and report.error is not None, "the refusal and the stop did not happen"
    src_client.select_folder("INBOX")
    src_client.delete_messages([too_big])  # the user deletes the message the destination refused
    src_client.expunge()
    src_client.unselect_folder()

    assert setup.sync().complete
    again = setup.sync()
    assert again.complete, again.folders[0].failed
    with dest_server.connect(small) as client:
        assert message_count(client) == 9
