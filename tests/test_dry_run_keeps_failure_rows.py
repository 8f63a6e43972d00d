"""A dry run changes nothing, the state database included (review of the failure clearing in the source listing).

A dry run takes no pair lock, so it may list a folder while a real pass of the pair runs: a failure row the
real pass writes for a message that arrived after the dry run's SELECT is not in the dry run's listing, and
clearing it would leave the message below the saved UIDNEXT with neither a journal row nor a failure row:
never copied by an incremental pass.
"""

from __future__ import annotations

from mailmirror.config.config_file import load_config
from mailmirror.lab.dovecot import SeedMessage, seed
from mailmirror.state.store import StateStore
from tests.support import Mirror, simple_message


def test_a_dry_run_keeps_the_failure_rows_of_messages_it_does_not_list(mirror: Mirror) -> None:
    seed(mirror.src, "INBOX", [SeedMessage(simple_message(1))])
    setup = mirror.setup()
    config = load_config(setup.config_path)
    store = StateStore(config.state.path)
    try:
        store.record_failure("test", "INBOX", 99, "the source did not return the message (expunged meanwhile?)")
    finally:
        store.close()

    report = setup.sync(dry_run=True)
    assert report.error is None

    store = StateStore(config.state.path)
    try:
        assert store.failed_uids("test", "INBOX") == [99]
    finally:
        store.close()
